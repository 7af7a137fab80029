// The DNS forwarder against hostile queries, with a fake upstream on loopback that records
// every message it receives: only a query rebuilt from one parsed question may reach it.
// Also its start (a port free for both UDP and TCP) and its stop (with clients still connected).
import assert from 'node:assert/strict';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import pino from 'pino';
import { DnsForwarder } from '../../src/network/dns.js';
import { DEFAULT_NETWORK, egressPolicy } from '../../src/network/policy.js';

const log = pino({ level: 'silent' });
const open = egressPolicy(DEFAULT_NETWORK);

/** A DNS server on loopback (UDP and TCP, one port) that answers every A query with 127.0.0.9 and keeps what it got. */
async function fakeUpstream(): Promise<{ port: number; got: Buffer[]; close(): Promise<void> }> {
  const got: Buffer[] = [];
  const answer = (m: Buffer): Buffer => {
    let end = 12;
    while (end < m.length && m[end] !== 0) end += m[end]! + 1;
    end += 5;
    const head = Buffer.from(m.subarray(0, end));
    head.writeUInt16BE(0x8180, 2);
    head.writeUInt16BE(1, 6);
    head.writeUInt16BE(0, 10);
    const rr = Buffer.from([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 9]);
    return Buffer.concat([head, rr]);
  };
  const udp = createSocket('udp4');
  udp.on('message', (m, r) => {
    got.push(Buffer.from(m));
    udp.send(answer(m), r.port, r.address);
  });
  await new Promise<void>((r) => udp.bind(0, '127.0.0.1', () => r()));
  const port = udp.address().port;
  const tcp = createServer((s) => {
    let buf = Buffer.alloc(0);
    s.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const m = buf.subarray(2, 2 + buf.readUInt16BE(0));
        got.push(Buffer.from(m));
        const out = answer(m);
        const len = Buffer.alloc(2);
        len.writeUInt16BE(out.length);
        s.end(Buffer.concat([len, out]));
      }
    });
  });
  await new Promise<void>((r) => tcp.listen(port, '127.0.0.1', () => r()));
  return { port, got, close: async () => void (await Promise.all([new Promise((r) => udp.close(() => r(0))), new Promise((r) => tcp.close(r))])) };
}

/** A query: header fields as given, one question per label list, then `extra` bytes as they are. */
function query(labels: (string | Buffer)[], opts: { id?: number; flags?: number; counts?: [number, number, number, number]; extra?: Buffer } = {}): Buffer {
  const head = Buffer.alloc(12);
  head.writeUInt16BE(opts.id ?? 0x4242, 0);
  head.writeUInt16BE(opts.flags ?? 0x0100, 2);
  (opts.counts ?? [1, 0, 0, 0]).forEach((n, i) => head.writeUInt16BE(n, 4 + 2 * i));
  const name = labels.map((l) => {
    const b = typeof l === 'string' ? Buffer.from(l) : l;
    return Buffer.concat([Buffer.from([b.length]), b]);
  });
  return Buffer.concat([head, ...name, Buffer.from([0, 0, 1, 0, 1]), opts.extra ?? Buffer.alloc(0)]);
}

const question = (labels: string[]) =>
  Buffer.concat([...labels.map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)])), Buffer.from([0, 0, 1, 0, 1])]);
/** An answer record (a compressed name pointing at the question). */
const RECORD = Buffer.from([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 1, 2, 3, 4]);
/** EDNS OPT with a 4096 payload, DO set, and an option (a cookie) the upstream must not see. */
const OPT_WITH_COOKIE = Buffer.from([0, 0, 41, 0x10, 0, 0, 0, 0x80, 0, 0, 12, 0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);

describe('the DNS forwarder under hostile queries', { timeout: 60_000 }, () => {
  let up: Awaited<ReturnType<typeof fakeUpstream>>;
  let dns: DnsForwarder;
  let client: UdpSocket;
  const resolved: string[][] = [];

  before(async () => {
    up = await fakeUpstream();
    dns = new DnsForwarder({
      upstreams: [{ host: '127.0.0.1', port: up.port }],
      log,
      lookup: (a) => (a === '127.0.0.1' ? { sandboxId: 'sbx', policy: open } : undefined),
      allowResolved: async (_id, addresses) => void resolved.push(addresses),
    });
    await dns.start();
    client = createSocket('udp4');
    await new Promise<void>((r) => client.bind(0, '127.0.0.1', () => r()));
  });
  after(async () => {
    client.close();
    await dns.close();
    await up.close();
  });

  /** Sends one message to the forwarder over UDP; its answer, or undefined when it stays silent. */
  function ask(msg: Buffer): Promise<Buffer | undefined> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => done(undefined), 1500);
      const done = (v: Buffer | undefined) => {
        clearTimeout(timer);
        client.off('message', onMessage);
        resolve(v);
      };
      const onMessage = (m: Buffer) => done(m);
      client.on('message', onMessage);
      client.send(msg, dns.port, '127.0.0.1');
    });
  }

  it("passes on an ordinary query rebuilt, under its own id, and answers with the asker's", async () => {
    const before = up.got.length;
    const r = await ask(query(['Data', 'example', 'test'], { id: 0x1234 }));
    assert.equal(r?.readUInt16BE(0), 0x1234);
    assert.equal(r!.readUInt16BE(6), 1, 'the upstream answer comes back');
    assert.equal(up.got.length, before + 1);
    const sent = up.got.at(-1)!;
    assert.deepEqual(sent.subarray(12), question(['data', 'example', 'test']));
    assert.equal(sent.readUInt16BE(2), 0x0100, 'RD only');
    assert.deepEqual(
      [4, 6, 8, 10].map((o) => sent.readUInt16BE(o)),
      [1, 0, 0, 0],
    );
  });

  it('never passes on extra records, trailing bytes or EDNS options', async () => {
    const before = up.got.length;
    const withAnswer = await ask(query(['x', 'test'], { counts: [1, 1, 0, 0], extra: RECORD }));
    assert.equal(withAnswer!.readUInt16BE(2) & 0xf, 1, 'FORMERR for a query carrying an answer record');
    const withAuthority = await ask(query(['x', 'test'], { counts: [1, 0, 1, 0], extra: RECORD }));
    assert.equal(withAuthority!.readUInt16BE(2) & 0xf, 1);
    const withAdditional = await ask(query(['x', 'test'], { counts: [1, 0, 0, 1], extra: RECORD }));
    assert.equal(withAdditional!.readUInt16BE(2) & 0xf, 1, 'an additional record other than OPT');
    const twoQuestions = await ask(query(['x', 'test'], { counts: [2, 0, 0, 0], extra: question(['y', 'test']) }));
    assert.equal(twoQuestions!.readUInt16BE(2) & 0xf, 1);
    assert.equal(up.got.length, before, 'none of them reached the upstream');

    const trailing = await ask(query(['x', 'test'], { extra: Buffer.from('smuggled bytes after the question') }));
    assert.equal(trailing!.readUInt16BE(6), 1);
    assert.deepEqual(up.got.at(-1)!.subarray(12), question(['x', 'test']), 'the trailing bytes stayed here');

    const edns = await ask(query(['x', 'test'], { counts: [1, 0, 0, 1], extra: OPT_WITH_COOKIE }));
    assert.ok(edns);
    const sent = up.got.at(-1)!;
    const opt = sent.subarray(12 + question(['x', 'test']).length);
    assert.equal(sent.readUInt16BE(10), 1, 'an OPT record of its own');
    assert.deepEqual(opt, Buffer.from([0, 0, 41, 0x04, 0xd0, 0, 0, 0x80, 0, 0, 0]), 'DO kept, payload size and options its own');
    assert.doesNotMatch(sent.toString('latin1'), /smuggled/);
  });

  it('answers UPDATE and NOTIFY itself and never passes them on', async () => {
    const before = up.got.length;
    for (const opcode of [4, 5]) {
      const r = await ask(query(['zone', 'test'], { flags: opcode << 11, counts: [1, 0, 1, 0], extra: RECORD }));
      assert.equal(r!.readUInt16BE(2) & 0xf, 4, `NOTIMP for opcode ${opcode}`);
      assert.equal((r!.readUInt16BE(2) >> 11) & 0xf, opcode);
    }
    assert.equal(up.got.length, before);
  });

  it("refuses labels holding '.', NUL or other bytes, and zone transfers", async () => {
    const before = up.got.length;
    for (const bad of [Buffer.from('a.b'), Buffer.from('a\0b'), Buffer.from('a b'), Buffer.from([0xff, 0x41])]) {
      const r = await ask(query([bad, 'test']));
      assert.equal(r!.readUInt16BE(2) & 0xf, 1, `FORMERR for label ${JSON.stringify(bad.toString('latin1'))}`);
    }
    const axfr = query(['zone', 'test']);
    axfr.writeUInt16BE(252, axfr.length - 4);
    assert.equal((await ask(axfr))!.readUInt16BE(2) & 0xf, 5, 'REFUSED for AXFR');
    assert.equal(up.got.length, before, 'nothing of them reached the upstream');
  });

  it('over TCP too: only the rebuilt query leaves', async () => {
    const before = up.got.length;
    const msg = query(['tcp', 'test'], { extra: Buffer.from('trailing') });
    const framed = Buffer.concat([Buffer.from([msg.length >> 8, msg.length & 255]), msg]);
    const answer = await new Promise<Buffer>((resolve, reject) => {
      const s = connect(dns.port, '127.0.0.1', () => s.write(framed));
      let buf = Buffer.alloc(0);
      s.on('data', (c: Buffer) => {
        buf = Buffer.concat([buf, c]);
        if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
          s.destroy();
          resolve(buf.subarray(2));
        }
      });
      s.on('error', reject);
    });
    assert.equal(answer.readUInt16BE(6), 1);
    assert.equal(up.got.length, before + 1);
    assert.deepEqual(up.got.at(-1)!.subarray(12), question(['tcp', 'test']));
  });

  it("drops a sandbox's queries past its rate", async () => {
    const droppedBefore = dns.dropped;
    const before = up.got.length;
    const msg = query(['flood', 'test']);
    for (let i = 0; i < 1000; i++) client.send(msg, dns.port, '127.0.0.1');
    await new Promise((r) => setTimeout(r, 1500));
    assert.ok(dns.dropped > droppedBefore, 'some were dropped');
    assert.ok(up.got.length - before < 1000, `${up.got.length - before} reached the upstream`);
  });
});

describe("the DNS forwarder's start and stop", { timeout: 60_000 }, () => {
  it('starts on a port free for both UDP and TCP, even when TCP ports are taken', async () => {
    // hold a TCP listener on a good share of the ephemeral ports: a UDP port chosen at random
    // then often has its TCP twin taken, and the forwarder must pick another pair
    const held: Server[] = [];
    for (let i = 0; i < 3000; i++) {
      const s = createServer();
      const ok = await new Promise<boolean>((r) => {
        s.once('error', () => r(false));
        s.listen(0, '127.0.0.1', () => r(true));
      });
      if (ok) held.push(s);
    }
    try {
      for (let i = 0; i < 60; i++) {
        const dns = new DnsForwarder({ upstreams: [], log, lookup: () => undefined, allowResolved: async () => undefined });
        const port = await dns.start();
        assert.ok(port > 0);
        await dns.close();
      }
    } finally {
      await Promise.all(held.map((s) => new Promise((r) => s.close(r))));
    }
  });

  it('stops at once, with a client still connected over TCP', async () => {
    const dns = new DnsForwarder({ upstreams: [], log, lookup: () => undefined, allowResolved: async () => undefined });
    const port = await dns.start();
    const s: Socket = connect(port, '127.0.0.1');
    await new Promise((r) => s.once('connect', r));
    // a client that keeps its connection busy (a byte now and then, never a whole query)
    s.write(Buffer.from([0x01]));
    const ticker = setInterval(() => s.write(Buffer.from([0x00])), 200);
    const ended = new Promise((r) => s.once('close', r));
    s.on('error', () => undefined);
    try {
      await dns.close();
      await ended;
    } finally {
      clearInterval(ticker);
      s.destroy();
    }
  });
});
