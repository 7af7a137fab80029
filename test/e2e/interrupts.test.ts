// A command cut off by its sandbox's pause or kill ends with an error that says which,
// through the real service and the published SDK; a kill ends it exactly as E2B's does.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { destroyInstance } from '../helpers/instance.js';
import { sdkService, type E2B, type Service } from '../helpers/service.js';

let e2b: E2B;
let svc: Service;
let dataDir: string;

describe('commands cut off by a pause or a kill', { timeout: 600_000 }, () => {
  before(async () => {
    ({ svc, dataDir, e2b } = await sdkService());
  });
  after(async () => {
    await svc.stop();
    await destroyInstance(undefined, dataDir);
  });

  for (const action of ['pause', 'kill'] as const) {
    it(`${action}: the running command's error names it`, async () => {
      const sbx = await e2b.Sandbox.create('base');
      let acted: Promise<unknown> | undefined;
      const run = sbx.commands.run('echo started; exec sleep 300', {
        timeoutMs: 120_000,
        onStdout: (d) => {
          if (d.includes('started') && !acted) acted = action === 'pause' ? sbx.pause() : sbx.kill();
        },
      });
      // both are the SDK's TimeoutError; a kill reads as E2B's own (the SDK's health probe sees
      // the 502 of a sandbox that is gone), a pause says so
      await assert.rejects(run, (e: unknown) => {
        assert.ok(e instanceof e2b.TimeoutError, `${(e as Error).name}: ${(e as Error).message}`);
        assert.match(
          (e as Error).message,
          action === 'pause' ? /the sandbox was paused/ : /terminated: The sandbox was killed or reached its end of life while the request was in flight/,
        );
        return true;
      });
      await acted;
      if (action === 'pause') {
        // the sandbox itself is fine: resumed, it runs commands again
        await e2b.Sandbox.connect(sbx.sandboxId);
        assert.equal((await sbx.commands.run('echo back')).stdout, 'back\n');
        await sbx.kill();
      }
    });
  }
});
