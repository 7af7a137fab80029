// A graceful stop of `cubebox serve` ends within its bound whatever is still open: here a client
// that keeps a TCP connection to the sandboxes' DNS forwarder alive.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { describe, it } from 'node:test';
import { openPaths } from '../../src/config.js';
import { destroyInstance, newDataDir, startServe, waitExit } from '../helpers/instance.js';

/** TCP ports a process listens on (ss -tlnp), but the API's. */
function listeningPorts(pid: number): number[] {
  const out = spawnSync('ss', ['-Htlnp'], { encoding: 'utf8' }).stdout;
  return out
    .split('\n')
    .filter((l) => l.includes(`pid=${pid},`))
    .map((l) => Number(/:(\d+)\s/.exec(l.split(/\s+/)[3] + ' ')?.[1]))
    .filter((p) => p > 0);
}

describe('graceful stop', { timeout: 300_000 }, () => {
  it('finishes within the shutdown bound while a client holds a DNS forwarder connection open', async () => {
    const dataDir = newDataDir();
    const serve = await startServe(dataDir, { CUBEBOX_SHUTDOWN_TIMEOUT: '2' });
    let held: Socket[] = [];
    let trickle: NodeJS.Timeout | undefined;
    try {
      // ss reads each process's descriptors as they are at that moment: asked again, not waited on
      let ports = listeningPorts(serve.pid!);
      for (let i = 0; i < 50 && ports.length < 2; i++) {
        await new Promise((r) => setTimeout(r, 100));
        ports = listeningPorts(serve.pid!);
      }
      assert.ok(ports.length >= 2, `serve listens on ${ports.join(', ')}`); // the API and the DNS forwarder
      // a client on every port serve listens on that trickles bytes and never finishes a message
      held = ports.map((port) => {
        const s = connect(port, '127.0.0.1', () => s.write(Buffer.from([0xff, 0xff])));
        s.on('error', () => undefined);
        return s;
      });
      trickle = setInterval(() => held.forEach((s) => s.writable && s.write('x')), 500);
      await new Promise((r) => setTimeout(r, 1000));
      serve.kill('SIGTERM');
      const outcome = await Promise.race([waitExit(serve).then(() => 'exited'), new Promise((r) => setTimeout(() => r('hung'), 60_000).unref())]);
      if (outcome === 'hung') serve.kill('SIGKILL');
      assert.equal(outcome, 'exited', 'serve did not stop');
      assert.equal(serve.exitCode, 0);
      assert.equal(existsSync(openPaths(dataDir, false).runRoot), false, 'the run directory was left behind');
    } finally {
      clearInterval(trickle);
      held.forEach((s) => s.destroy());
      // a failure before the stop must not leave serve running (nor this test waiting on it)
      if (serve.exitCode === null && serve.signalCode === null) serve.kill('SIGKILL');
      await waitExit(serve);
      await destroyInstance(undefined, dataDir);
    }
  });
});
