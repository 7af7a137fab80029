// The data plane from the page, through the published e2b SDK: cubebox's data plane answers on
// the API's own origin (the E2b-Sandbox-Id header routes a request to a sandbox), so the SDK's
// sandboxUrl is this origin and no CORS is involved. The sandbox is built from GET /sandboxes/:id
// (its envd token) rather than Sandbox.connect, which would resume a paused one.
import { Sandbox } from 'e2b';
import { apiKey, type SandboxDetail } from './api.js';

export function sdkSandbox(d: SandboxDetail): Sandbox {
  return new Sandbox({
    sandboxId: d.sandboxID,
    sandboxDomain: d.domain,
    envdVersion: d.envdVersion,
    envdAccessToken: d.envdAccessToken,
    trafficAccessToken: d.trafficAccessToken,
    apiKey: apiKey() ?? undefined,
    apiUrl: location.origin,
    sandboxUrl: location.origin,
  });
}
