import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AddressPlan, contains, overlaps, parseCidr, parseIp } from '../../src/network/cidr.js';
import { answerAddresses, emptyAnswer, parseQuery, RCODE_REFUSED } from '../../src/network/dns-wire.js';
import { DEFAULT_NETWORK, egressPolicy, nameAllowed, nameGrantsAddresses, networkSettings, shownSettings } from '../../src/network/policy.js';
import { policyScript } from '../../src/network/rules.js';
import { CubeboxError } from '../../src/util/errors.js';

const bad = (fn: () => unknown, re: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof CubeboxError && e.kind === 'invalid_argument' && re.test(e.message));

describe('addresses', () => {
  it('parses addresses and blocks strictly', () => {
    assert.equal(parseIp('10.0.0.1'), 0x0a000001);
    for (const t of ['10.0.0', '10.0.0.256', '010.0.0.1', '1.2.3.4.5', ' 1.2.3.4']) assert.equal(parseIp(t), undefined, t);
    assert.deepEqual(parseCidr('10.1.2.3/8'), { base: 0x0a000000, prefix: 8 });
    assert.deepEqual(parseCidr('8.8.8.8'), { base: 0x08080808, prefix: 32 });
    assert.equal(parseCidr('10.0.0.0/33'), undefined);
    assert.ok(contains(parseCidr('0.0.0.0/0')!, parseIp('203.0.113.7')!));
    assert.ok(overlaps(parseCidr('10.0.0.0/8')!, parseCidr('10.200.4.0/22')!));
    assert.ok(!overlaps(parseCidr('10.0.0.0/16')!, parseCidr('10.1.0.0/16')!));
  });

  it('gives each slot a /31: the host end even, the sandbox end odd', () => {
    const plan = new AddressPlan('10.200.4.0/22');
    assert.equal(plan.slots, 512);
    assert.equal(plan.hostAddress(0), '10.200.4.0');
    assert.equal(plan.sandboxAddress(0), '10.200.4.1');
    assert.equal(plan.sandboxAddress(511), '10.200.7.255');
    assert.equal(plan.slotOf('10.200.4.3'), 1);
    assert.equal(plan.slotOf('10.200.4.2'), undefined, 'a host end is no sandbox');
    assert.equal(plan.slotOf('10.200.8.1'), undefined);
    assert.throws(() => new AddressPlan('10.200.0.0/30'), /between a \/8 and a \/24/);
    assert.throws(() => new AddressPlan('10.200.0.0'), /CIDR block/);
  });
});

describe('network settings and the egress policy', () => {
  it('takes E2B options, normalised', () => {
    const s = networkSettings({
      allowOut: ['Example.COM', '*.api.example.com', '1.2.3.4', '10.0.0.0/8'],
      denyOut: ['0.0.0.0/0'],
      allowPublicTraffic: false,
      httpsPorts: [3000, 3000],
    });
    assert.deepEqual(s.allowOut, ['example.com', '*.api.example.com', '1.2.3.4/32', '10.0.0.0/8']);
    assert.deepEqual(s.httpsPorts, [3000]);
    const p = egressPolicy(s);
    assert.deepEqual(p.allowCidrs, ['1.2.3.4/32', '10.0.0.0/8']);
    assert.deepEqual(p.domains, ['example.com']);
    assert.deepEqual(p.wildcards, ['api.example.com']);
    assert.equal(p.restricted, true);
  });

  it('allowInternetAccess false denies everything; allow still wins', () => {
    const p = egressPolicy(networkSettings({ allowInternetAccess: false, allowOut: ['9.9.9.9'] }));
    assert.deepEqual(p.denyCidrs, ['0.0.0.0/0']);
    assert.deepEqual(p.allowCidrs, ['9.9.9.9/32']);
    assert.ok(p.restricted);
    assert.equal(egressPolicy(DEFAULT_NETWORK).restricted, false);
  });

  it('names: only allowed ones resolve under a restricted policy; *.x matches subdomains, not x', () => {
    const p = egressPolicy(networkSettings({ allowOut: ['a.test', '*.b.test'], denyOut: ['0.0.0.0/0'] }));
    assert.ok(nameAllowed(p, 'a.test'));
    assert.ok(nameAllowed(p, 'A.TEST.'));
    assert.ok(nameAllowed(p, 'x.y.b.test'));
    assert.ok(!nameAllowed(p, 'b.test'));
    assert.ok(!nameAllowed(p, 'data.a.test'), 'subdomains of an exact name are not allowed');
    assert.ok(!nameAllowed(p, 'evil-b.test'));
    assert.ok(nameGrantsAddresses(p, 'q.b.test'));
    const open = egressPolicy(DEFAULT_NETWORK);
    assert.ok(nameAllowed(open, 'anything.example'));
    assert.ok(!nameGrantsAddresses(open, 'anything.example'));
  });

  it('an update replaces the egress rules and keeps how ports are served', () => {
    const created = networkSettings({ allowPublicTraffic: false, maskRequestHost: 'h:${PORT}', denyOut: ['1.1.1.1'] });
    const updated = networkSettings({ allowOut: ['2.2.2.2'] }, created);
    assert.deepEqual(updated.denyOut, []);
    assert.deepEqual(updated.allowOut, ['2.2.2.2/32']);
    assert.equal(updated.allowPublicTraffic, false);
    assert.equal(updated.maskRequestHost, 'h:${PORT}');
  });

  it('refuses what it cannot enforce, naming the field', () => {
    bad(() => networkSettings({ denyOut: ['example.com'] }), /denyOut/);
    bad(() => networkSettings({ allowOut: ['*'] }), /allowOut/);
    bad(() => networkSettings({ allowOut: ['bad_name!.com'] }), /allowOut/);
    bad(() => networkSettings({ allowOut: ['::1'] }), /IPv6/);
    bad(() => networkSettings({ allowOut: 'example.com' }), /array of strings/);
    bad(() => networkSettings({ allowOut: Array.from({ length: 257 }, (_, i) => `h${i}.test`) }), /at most 256/);
    bad(() => networkSettings({ httpsPorts: [49983] }), /envd/);
    bad(() => networkSettings({ httpsPorts: [0] }), /httpsPorts/);
    bad(() => networkSettings({ egressProxy: { address: 'p.test' } }), /egressProxy\.address: the port/);
    bad(() => networkSettings({ egressProxy: { address: 'p.test:70000' } }), /egressProxy\.address: the port/);
    bad(() => networkSettings({ egressProxy: { address: '[::1]:1080' } }), /egressProxy\.address: IPv6/);
    bad(() => networkSettings({ egressProxy: { address: 'bad_name!:1080' } }), /egressProxy\.address must be/);
    bad(() => networkSettings({ egressProxy: { address: '169.254.169.254:1080' } }), /egressProxy\.address: .*reserved/);
    bad(() => networkSettings({ egressProxy: { address: '127.0.0.1:1080' } }), /egressProxy\.address: .*loopback/);
    bad(() => networkSettings({ egressProxy: { address: 'p.test:1080', password: 'x' } }), /egressProxy\.password is only valid together/);
    bad(() => networkSettings({ egressProxy: { address: 'p.test:1080', username: 'u'.repeat(256) } }), /egressProxy\.username .*255 bytes/);
    bad(() => networkSettings({ egressProxy: { address: 'p.test:1080', username: '' } }), /egressProxy\.username/);
    bad(() => networkSettings({ egressProxy: { address: 'p.test:1080', token: 'x' } }), /egressProxy\.token is not a field/);
    bad(() => networkSettings({ egressProxy: 'p.test:1080' }), /egressProxy must be an object/);
    bad(() => networkSettings({ rules: { '*': [] } }), /network\.rules: a bare '\*'/);
    bad(() => networkSettings({ maskRequestHost: 'a b' }), /maskRequestHost/);
    bad(() => networkSettings({ allowInternetAccess: 'no' }), /allow_internet_access/);
  });

  it('takes an upstream SOCKS5 proxy, shows it without its password, and an update without it clears it', () => {
    const s = networkSettings({ egressProxy: { address: 'Proxy.Example.test:1080', username: 'u', password: 'p' } });
    assert.deepEqual(s.egressProxy, { address: 'proxy.example.test:1080', username: 'u', password: 'p' });
    assert.deepEqual(shownSettings(s).egressProxy, { address: 'proxy.example.test:1080', username: 'u' });
    assert.deepEqual(networkSettings({ egressProxy: { address: '198.51.100.7:1080' } }).egressProxy, { address: '198.51.100.7:1080' });
    assert.equal(egressPolicy(s).tunnel, true);
    assert.equal(networkSettings({ allowOut: ['1.1.1.1'] }, s).egressProxy, undefined);
    assert.equal(egressPolicy(networkSettings({}, s)).tunnel, false);
  });

  it('sends the TCP a tunnelled slot lets out to the tunnel, in the order of the slot chain', () => {
    const script = policyScript('cubebox_x', 3, egressPolicy(networkSettings({ denyOut: ['9.9.9.9'], egressProxy: { address: 'p.test:1080' } })));
    assert.deepEqual(script.split('\n').slice(-7), [
      'flush chain inet cubebox_x i3',
      'add rule inet cubebox_x i3 ip daddr @p3 jump egress_proxy',
      'add rule inet cubebox_x i3 ip daddr @blocked return',
      'add rule inet cubebox_x i3 ip daddr @a3 jump tunnel',
      'add rule inet cubebox_x i3 ip daddr @r3 jump tunnel',
      'add rule inet cubebox_x i3 ip daddr @d3 return',
      'add rule inet cubebox_x i3 jump tunnel',
    ]);
  });

  it('writes a policy as one nft transaction over the slot sets', () => {
    const script = policyScript('cubebox_x', 3, egressPolicy(networkSettings({ allowOut: ['1.2.3.0/24'], denyOut: ['0.0.0.0/0'] })));
    assert.equal(
      script,
      [
        'flush set inet cubebox_x a3',
        'flush set inet cubebox_x d3',
        'flush set inet cubebox_x r3',
        'flush set inet cubebox_x p3',
        'add element inet cubebox_x a3 { 1.2.3.0/24 }',
        'add element inet cubebox_x d3 { 0.0.0.0/0 }',
        'flush chain inet cubebox_x i3',
        'add rule inet cubebox_x i3 ip daddr @p3 jump egress_proxy',
      ].join('\n'),
    );
  });
});

describe('DNS wire', () => {
  const query = (name: string, type = 1) =>
    Buffer.concat([
      Buffer.from([0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]),
      ...name.split('.').map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)])),
      Buffer.from([0, 0, type, 0, 1]),
    ]);

  it('reads a query and answers it empty with the rcode asked', () => {
    const q = parseQuery(query('Data.Example.test'))!;
    assert.equal(q.name, 'data.example.test');
    assert.equal(q.type, 1);
    const refused = emptyAnswer(query('Data.Example.test'), q, RCODE_REFUSED);
    assert.equal(refused.readUInt16BE(0), 0x1234);
    assert.equal(refused.readUInt16BE(2) & 0x800f, 0x8005);
    assert.equal(refused.readUInt16BE(6), 0);
  });

  it('refuses malformed and hostile messages without throwing', () => {
    assert.equal(parseQuery(Buffer.alloc(5)), undefined);
    const loop = Buffer.from([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1]); // a pointer to itself
    assert.equal(parseQuery(loop), undefined);
    const long = query(Array.from({ length: 10 }, () => 'a'.repeat(63)).join('.'));
    assert.equal(parseQuery(long), undefined, 'names over 255 bytes');
    const response = query('x.test');
    response.writeUInt16BE(0x8180, 2);
    assert.equal(parseQuery(response), undefined, 'a response is not a query');
  });

  it('reads the A records of an answer, with compression, and their smallest TTL', () => {
    const q = query('x.test');
    const head = Buffer.from(q);
    head.writeUInt16BE(0x8180, 2);
    head.writeUInt16BE(2, 6);
    const rr = (ip: number[], ttl: number) => {
      const b = Buffer.alloc(16);
      b.writeUInt16BE(0xc00c, 0);
      b.writeUInt16BE(1, 2);
      b.writeUInt16BE(1, 4);
      b.writeUInt32BE(ttl, 6);
      b.writeUInt16BE(4, 10);
      Buffer.from(ip).copy(b, 12);
      return b;
    };
    const { addresses, ttl } = answerAddresses(Buffer.concat([head, rr([1, 2, 3, 4], 300), rr([5, 6, 7, 8], 60)]));
    assert.deepEqual(addresses, ['1.2.3.4', '5.6.7.8']);
    assert.equal(ttl, 60);
    assert.deepEqual(answerAddresses(Buffer.concat([head, rr([1, 2, 3, 4], 300).subarray(0, 10)])).addresses, [], 'a cut record is ignored');
  });
});
