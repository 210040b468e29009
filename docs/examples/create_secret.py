"""Create and list secrets through your PDS with the Python atproto SDK (0.0.72+).

Settings come from the environment.
"""

import json
import os

from atproto import Client, models

client = Client(os.environ["PDS_URL"])
# fetch_bsky_profile=False: login would otherwise ask for a Bluesky profile,
# which a PDS without Bluesky's app view cannot give.
client.login(os.environ["HANDLE"], os.environ["APP_PASSWORD"], fetch_bsky_profile=False)
sidecar = client.with_proxy("wisp_sidecar", os.environ["SIDECAR_DID"])
created = sidecar.invoke_procedure(
    "place.wisp.v2.secret.create",
    # The SDK sends a model or its DotDict, not a plain dict.
    data=models.dot_dict.DotDict({"name": "orders"}),
    input_encoding="application/json",
    output_encoding="application/json",
)
# created.content["token"]: the secret, shown this once; give it to the receiver
listed = sidecar.invoke_query("place.wisp.v2.secret.list")
print(json.dumps({"created": created.content, "listed": listed.content}))
