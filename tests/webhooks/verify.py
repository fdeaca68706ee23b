"""Verifies deliveries a channeld receiver recorded, with PyPI's `standardwebhooks` (the
reference library receivers use).

    python verify.py deliveries.json

The file holds `[{"secrets": ["whsec_…", …], "headers": {"webhook-id": …, …}, "body": "…"}]`; every
delivery must verify under every one of its secrets. Prints the number verified.
"""

import json
import sys

from standardwebhooks import Webhook

deliveries = json.load(open(sys.argv[1]))
checked = 0
for delivery in deliveries:
    for secret in delivery["secrets"]:
        payload = Webhook(secret).verify(delivery["body"], delivery["headers"])
        assert payload == json.loads(delivery["body"]), "the verified payload differs from the body"
        checked += 1
print(checked)
