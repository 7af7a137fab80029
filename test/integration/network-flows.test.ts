// A released address's flow entries: dropped from the host's table in both directions, and when
// the table holds none of the address, no conntrack process is started for it. The entries are
// made by the test itself (conntrack -I, addresses of the benchmarking range no host uses) and
// are gone at the end.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { after, describe, it } from 'node:test';
import { flushConntrack, hasConntrack, mayHaveFlows } from '../../src/network/host.js';
import { observeSpawns } from '../../src/util/exec.js';

const ADDR = '198.18.255.9';
const PEER = '198.18.255.8';
const skip = !hasConntrack() || !existsSync('/proc/net/nf_conntrack') ? 'needs conntrack(8) and /proc/net/nf_conntrack' : false;

const conntrack = (args: string[]) => spawnSync('conntrack', args, { encoding: 'utf8' });
const entriesOf = (addr: string) => ['-s', '-d'].flatMap((dir) => conntrack(['-L', dir, addr]).stdout.split('\n').filter(Boolean));

/** Runs fn and counts the conntrack processes it started. */
async function conntrackSpawns(fn: () => Promise<void>): Promise<number> {
  let n = 0;
  observeSpawns((file) => (file.endsWith('conntrack') && n++, undefined));
  try {
    await fn();
  } finally {
    observeSpawns(undefined);
  }
  return n;
}

describe("a released address's flow entries", { skip }, () => {
  after(() => {
    for (const dir of ['-s', '-d']) conntrack(['-D', dir, ADDR]);
  });

  it('an address the flow table has no entry of is released without a conntrack process', async () => {
    for (const dir of ['-s', '-d']) conntrack(['-D', dir, ADDR]);
    assert.equal(mayHaveFlows(ADDR), false);
    assert.equal(await conntrackSpawns(() => flushConntrack(ADDR)), 0);
  });

  it('entries with the address as source or as destination are all dropped', async () => {
    const made = [
      ['-I', '-p', 'tcp', '-s', ADDR, '-d', PEER, '--sport', '40001', '--dport', '7', '--state', 'ESTABLISHED', '-t', '60', '-u', 'SEEN_REPLY'],
      ['-I', '-p', 'udp', '-s', PEER, '-d', ADDR, '--sport', '40002', '--dport', '53', '-t', '60'],
    ].map((args) => conntrack(args));
    for (const r of made) assert.equal(r.status, 0, r.stderr);
    assert.equal(entriesOf(ADDR).length, 2);
    assert.equal(mayHaveFlows(ADDR), true);
    // a longer address with the same prefix is not this one
    assert.equal(mayHaveFlows('198.18.255.90'), false);
    assert.equal(await conntrackSpawns(() => flushConntrack(ADDR)), 2);
    assert.deepEqual(entriesOf(ADDR), []);
    assert.equal(mayHaveFlows(ADDR), false);
  });

  it('an address it cannot rule out from the table (IPv6) is flushed as before', () => {
    assert.equal(mayHaveFlows('fd00::9'), true);
  });
});
