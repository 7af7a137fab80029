import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { subtractCidrs } from '../../src/network/cidr.js';

describe('blocked networks less --allow-private', () => {
  it('drops a block named whole or covered, and keeps the rest', () => {
    assert.deepEqual(subtractCidrs(['10.0.0.0/8', '192.168.0.0/16'], ['10.0.0.0/8']), ['192.168.0.0/16']);
    assert.deepEqual(subtractCidrs(['192.0.2.0/24', '192.0.2.1/32'], ['192.0.0.0/16']), []);
  });

  it('carves a subnet out of a larger block, covering everything else of it', () => {
    const left = subtractCidrs(['192.168.0.0/16'], ['192.168.1.0/24']);
    assert.equal(left.length, 8);
    assert.ok(!left.includes('192.168.1.0/24'));
    assert.ok(left.includes('192.168.0.0/24') && left.includes('192.168.128.0/17'));
  });

  it('refuses what is not a CIDR, naming it', () => {
    assert.throws(() => subtractCidrs(['172.16.0.0/12'], ['not-a-cidr']), /--allow-private .* 'not-a-cidr'/);
  });
});
