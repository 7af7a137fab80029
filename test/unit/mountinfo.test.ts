import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { mountsAtOrUnder, mountTable, parseMountinfoLine } from '../../src/runtime/mountinfo.js';

describe('mountinfo', () => {
  it('parses a line, unescaping octal escapes in the mount point and source', () => {
    const line = '36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - overlay cubebox-a\\134b rw,lowerdir=x';
    assert.deepEqual(parseMountinfoLine(line), { mountPoint: '/mnt/with space', fsType: 'overlay', source: 'cubebox-a\\b', superOptions: 'rw,lowerdir=x' });
  });
  it("reads this process's table; / is at or under /", () => {
    assert.ok(mountTable().some((m) => m.mountPoint === '/'));
    assert.ok(mountsAtOrUnder('/').includes('/'));
  });
});
