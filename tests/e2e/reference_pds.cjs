// The real reference PDS for tests/e2e: an in-memory PLC directory and a
// development-mode @atproto/pds, both on 127.0.0.1, data in a temporary folder.
//
// Prints one JSON line {"event": "ready", "pds": <url>, "plc": <url>} once both
// listen, then runs until stdin closes or SIGTERM comes, and stops both.
// The packages come from NODE_PATH (tests/e2e/reference_pds.py installs them
// outside the work tree).
'use strict'

const crypto = require('node:crypto')
const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')
const { Database, PlcServer } = require('@did-plc/server')
const pds = require('@atproto/pds')

const LOOPBACK = '127.0.0.1'

// Both servers call express's app.listen(port), which binds every interface.
function onLoopback(app) {
  const listen = app.listen.bind(app)
  app.listen = (port, ...rest) => listen(port, LOOPBACK, ...rest)
}

// The PDS must know its port before it starts: its public URL is made from it.
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once('error', reject)
    server.listen(0, LOOPBACK, () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

async function main() {
  const plc = PlcServer.create({ db: Database.mock(), port: 0 })
  onLoopback(plc.app)
  const plcServer = await plc.start()
  const plcUrl = `http://${LOOPBACK}:${plcServer.address().port}`

  const port = await freePort()
  const dataDirectory = fs.mkdtempSync(path.join(os.tmpdir(), 'wisp-e2e-pds-'))
  const env = {
    port,
    // "localhost" is the one host the PDS serves over plain http (its publicUrl).
    hostname: 'localhost',
    devMode: true,
    // Development only: proxied calls and did:web documents live on loopback.
    disableSsrfProtection: true,
    dataDirectory,
    blobstoreDiskLocation: path.join(dataDirectory, 'blobs'),
    didPlcUrl: plcUrl,
    inviteRequired: false,
    serviceHandleDomains: ['.test'],
    jwtSecret: crypto.randomBytes(16).toString('hex'),
    adminPassword: crypto.randomBytes(16).toString('hex'),
    plcRotationKeyK256PrivateKeyHex: crypto.randomBytes(32).toString('hex'),
  }
  const server = await pds.PDS.create(pds.envToCfg(env), pds.envToSecrets(env))
  onLoopback(server.app)
  await server.start()
  process.stdout.write(
    JSON.stringify({ event: 'ready', pds: `http://localhost:${port}`, plc: plcUrl }) + '\n',
  )

  let stopping = false
  const stop = async () => {
    if (stopping) return
    stopping = true
    await server.destroy()
    await plc.destroy()
    fs.rmSync(dataDirectory, { recursive: true, force: true })
    process.exit(0)
  }
  process.on('SIGTERM', stop)
  process.stdin.on('end', stop)
  process.stdin.resume()
}

main().catch((error) => {
  process.stderr.write(`${error && error.stack ? error.stack : error}\n`)
  process.exit(1)
})
