// An idle connection flood against the API port (no key needed): the service bounds the
// connections per listener and per client address and the time to send request headers, so the
// flood costs the flooder, while keyed clients keep creating sandboxes and running commands.
import assert from 'node:assert/strict';
import http from 'node:http';
import { connect, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { destroyInstance } from '../helpers/instance.js';
import { sdkService, startService, type E2B, type Service } from '../helpers/service.js';

const CAP = 24;
const PER_ADDRESS = 6;
/** Flooders on loopback addresses of their own: 8 of them may hold 48, twice the listener's cap. */
const FLOODERS = Array.from({ length: 8 }, (_, i) => `127.0.0.${i + 2}`);
const LIMITS = { CUBEBOX_MAX_CONNECTIONS: String(CAP), CUBEBOX_MAX_CONNECTIONS_PER_ADDRESS: String(PER_ADDRESS) };

let e2b: E2B;
let svc: Service;
let dataDir: string;

/** Idle connections that never finish (half send a request line and no end of headers, half nothing). */
class Flood {
  readonly open = new Set<Socket>();
  constructor(private readonly port: number) {}

  burst(perAddress: number): void {
    for (const localAddress of FLOODERS) {
      for (let i = 0; i < perAddress; i++) {
        const s = connect({ port: this.port, host: '127.0.0.1', localAddress });
        this.open.add(s);
        s.on('error', () => undefined);
        s.on('close', () => this.open.delete(s));
        if (i % 2) s.on('connect', () => s.write('GET / HTTP/1.1\r\nHost: x\r\n'));
      }
    }
  }

  from(address: string): number {
    return [...this.open].filter((s) => s.localAddress === address).length;
  }

  /** Waits (polling) until at most n of its connections are open; false if that never happens. */
  async settlesAtMost(n: number): Promise<boolean> {
    for (let i = 0; i < 300; i++) {
      if (this.open.size <= n) return true;
      await sleep(100);
    }
    return false;
  }

  end(): void {
    for (const s of this.open) s.destroy();
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** GET /health from a given local address, on a connection of its own. */
function health(localAddress = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port: svc.port, path: '/health', localAddress, agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
  });
}

/** Resolves when the socket closes. */
const closed = (s: Socket) => new Promise<void>((r) => (s.destroyed ? r() : s.once('close', () => r())));

describe('idle connection floods', { timeout: 900_000 }, () => {
  before(async () => {
    // a header deadline longer than the test: here only the caps close the flood
    ({ svc, dataDir, e2b } = await sdkService({ ...LIMITS, CUBEBOX_HEADER_TIMEOUT: '300' }));
  });
  after(async () => {
    await svc.stop();
    await destroyInstance(undefined, dataDir);
  });

  it('a flood beyond the caps is bounded; serve stays up, a keyed client creates a sandbox and runs commands meanwhile, and all recovers after', async () => {
    const flood = new Flood(svc.port);
    try {
      flood.burst(15); // 120 connections: 15 per address against a cap of 6, 48 against a cap of 24
      assert.ok(await flood.settlesAtMost(CAP), `${flood.open.size} flood connections stay open (cap ${CAP})`);
      for (const a of FLOODERS) assert.ok(flood.from(a) <= PER_ADDRESS, `${a} holds ${flood.from(a)} connections`);

      // the listener is full of idle connections: a keyed client still gets through
      const sbx = await e2b.Sandbox.create('base');
      try {
        assert.equal((await sbx.commands.run('echo hi')).stdout, 'hi\n');
        // a stream in flight is not cut by the next wave
        const long = sbx.commands.run('sleep 2; echo done');
        await sleep(300);
        flood.burst(15);
        assert.equal((await long).stdout, 'done\n');
        assert.ok(await flood.settlesAtMost(CAP));
        assert.equal(svc.child.exitCode, null, 'serve exited');
        assert.equal(await health(), 200);

        // the flood ends: every flooder address is served again
        flood.end();
        for (const a of FLOODERS) assert.equal(await health(a), 200);
        assert.equal((await sbx.commands.run('echo again')).stdout, 'again\n');
      } finally {
        await sbx.kill();
      }
    } finally {
      flood.end();
    }
  });

  it('a connection that never completes its request headers is closed at the header deadline; longer command streams are not', async () => {
    await svc.stop();
    svc = await startService(dataDir, { port: svc.port, env: { ...LIMITS, CUBEBOX_HEADER_TIMEOUT: '1' } });
    const sbx = await e2b.Sandbox.create('base');
    try {
      const silent = connect(svc.port, '127.0.0.1');
      const partial = connect(svc.port, '127.0.0.1', () => partial.write('GET /health HTTP/1.1\r\nHost: x\r\n'));
      for (const s of [silent, partial]) s.on('error', () => undefined);
      const r = await sbx.commands.run('sleep 3; echo done');
      assert.equal(r.stdout, 'done\n');
      const deadline = sleep(30_000).then(() => 'open');
      assert.equal(await Promise.race([Promise.all([closed(silent), closed(partial)]).then(() => 'closed'), deadline]), 'closed');
      assert.equal(await health(), 200);
    } finally {
      await sbx.kill();
    }
  });
});
