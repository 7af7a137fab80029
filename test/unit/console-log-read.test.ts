import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, truncateSync, writeFileSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { readConsoleLog } from '../../src/api/logs.js';

describe('console log reads', () => {
  it('a hole left by a writer without O_APPEND after a rotation reads as nothing, from either end', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cubebox-log-'));
    try {
      const file = join(dir, 'console.log');
      writeFileSync(`${file}.1`, 'older\n');
      // the writer's offset was 1 MiB when the file was emptied: its next line lands after a hole
      writeFileSync(file, '');
      truncateSync(file, 1024 * 1024);
      appendFileSync(file, 'after the hole\n');
      for (const from of ['head', 'tail'] as const) {
        const r = await readConsoleLog(file, { from, limit: 100 });
        assert.deepEqual(r.lines, ['older', 'after the hole'], from);
        assert.ok(!JSON.stringify(r.lines).includes('\\u0000'), from);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
