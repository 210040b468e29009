// Create and list secrets through your PDS with @atproto/api (node 20+).
// Settings come from the environment; this repository's lexicons/ folder is
// copied beside the script.
import { readFile } from 'node:fs/promises'
import { AtpAgent } from '@atproto/api'

const { PDS_URL, HANDLE, APP_PASSWORD, SIDECAR_DID } = process.env
const lexicon = async (method) => {
  const file = new URL(`./lexicons/place/wisp/v2/secret/${method}.json`, import.meta.url)
  return JSON.parse(await readFile(file, 'utf8'))
}

const agent = new AtpAgent({ service: PDS_URL })
await agent.login({ identifier: HANDLE, password: APP_PASSWORD })
// withProxy returns a copy that starts from the bundled lexicons:
// add ours to that copy, not to agent.
const sidecar = agent.withProxy('wisp_sidecar', SIDECAR_DID)
for (const method of ['create', 'list', 'rotate', 'delete']) {
  sidecar.lex.add(await lexicon(method))
}

const { data: created } = await sidecar.call('place.wisp.v2.secret.create', {}, { name: 'orders' })
// created.token: the secret, shown this once; give it to the receiver
const { data: listed } = await sidecar.call('place.wisp.v2.secret.list')
console.log(JSON.stringify({ created, listed }))
