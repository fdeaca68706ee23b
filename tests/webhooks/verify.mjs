// Verifies deliveries a channeld receiver recorded, with npm's `standardwebhooks` (the reference
// library receivers use):
//
//   node verify.mjs deliveries.json
//
// The file holds `[{"secrets": ["whsec_…", …], "headers": {"webhook-id": …, …}, "body": "…"}]`;
// every delivery must verify under every one of its secrets. Prints the number verified.
import { readFileSync } from "node:fs";
import { Webhook } from "standardwebhooks";

const deliveries = JSON.parse(readFileSync(process.argv[2], "utf8"));
let checked = 0;
for (const delivery of deliveries) {
  for (const secret of delivery.secrets) {
    const payload = new Webhook(secret).verify(delivery.body, delivery.headers);
    if (JSON.stringify(payload) !== JSON.stringify(JSON.parse(delivery.body))) {
      throw new Error("the verified payload differs from the body");
    }
    checked += 1;
  }
}
console.log(checked);
