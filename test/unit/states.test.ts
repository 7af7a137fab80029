import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  allows,
  assertOperation,
  assertTransition,
  canTransition,
  cubeboxStateShown,
  deadlineFor,
  e2bStateOf,
  SANDBOX_STATES,
  STATE_DEADLINE_MS,
  TRANSITIONS,
  type SandboxState,
} from '../../src/sandbox/states.js';
import { CubeboxError } from '../../src/util/errors.js';

describe('sandbox states', () => {
  it('the table covers every state and names only known states', () => {
    assert.deepEqual(Object.keys(TRANSITIONS).sort(), [...SANDBOX_STATES].sort());
    for (const to of Object.values(TRANSITIONS).flat()) assert.ok(SANDBOX_STATES.includes(to), to);
  });

  it('rule 1: every state can go to deleting, and deleting to itself (a retried teardown)', () => {
    for (const s of SANDBOX_STATES) assert.ok(canTransition(s, 'deleting'), `${s} -> deleting`);
  });

  it('stopped and failed only go to deleting (or a retried teardown records failed)', () => {
    assert.deepEqual(TRANSITIONS.stopped, ['deleting']);
    assert.deepEqual(TRANSITIONS.failed, ['deleting']);
    assert.equal(canTransition('stopped', 'running'), false);
  });

  it('the happy paths and the warm pool are allowed', () => {
    const paths: Array<[SandboxState, SandboxState]> = [
      ['creating', 'running'],
      ['creating', 'pooled'],
      ['pooled', 'creating'],
      ['running', 'pausing'],
      ['pausing', 'paused'],
      ['paused', 'resuming'],
      ['resuming', 'running'],
      ['pausing', 'running'], // a snapshot of a running sandbox thaws it
    ];
    for (const [from, to] of paths) assert.doesNotThrow(() => assertTransition(from, to), `${from} -> ${to}`);
  });

  it('refuses transitions that skip a step, as an internal error', () => {
    for (const [from, to] of [
      ['running', 'resuming'],
      ['paused', 'pausing'],
      ['creating', 'paused'],
      ['deleting', 'running'],
    ] as const) {
      assert.equal(canTransition(from, to), false, `${from} -> ${to}`);
      assert.throws(
        () => assertTransition(from, to),
        (e: unknown) => e instanceof CubeboxError && e.kind === 'internal',
      );
    }
  });

  it('operations start from their states and refuse others with the same conflict messages', () => {
    const conflictWith = (re: RegExp) => (e: unknown) => e instanceof CubeboxError && e.kind === 'conflict' && re.test(e.message);
    assert.throws(() => assertOperation('pause', 'x', 'paused'), conflictWith(/^sandbox 'x' is already paused$/));
    assert.throws(() => assertOperation('pause', 'x', 'stopped'), conflictWith(/is stopped; only a running sandbox can be paused/));
    assert.throws(() => assertOperation('resume', 'x', 'running'), conflictWith(/^sandbox 'x' is already running$/));
    assert.throws(() => assertOperation('resume', 'x', 'failed'), conflictWith(/only a paused sandbox can be resumed/));
    assert.throws(() => assertOperation('exec', 'x', 'paused'), conflictWith(/resume it before running commands/));
    assert.throws(() => assertOperation('exec', 'x', 'creating'), conflictWith(/commands need a running sandbox/));
    assert.throws(() => assertOperation('snapshot', 'x', 'stopped'), conflictWith(/only a running or paused sandbox can be snapshotted/));
    assert.throws(() => assertOperation('connect', 'x', 'deleting'), conflictWith(/is being deleted/));
    assert.throws(() => assertOperation('setTimeout', 'x', 'deleting'), conflictWith(/is being deleted/));
    assert.throws(() => assertOperation('refresh', 'x', 'paused'), conflictWith(/^sandbox 'x' is paused$/));
    assert.ok(allows('setTimeout', 'paused') && allows('connect', 'paused') && allows('claim', 'pooled'));
  });

  it('operations that change state start only where the table allows their first step', () => {
    for (const s of SANDBOX_STATES) {
      if (allows('pause', s)) assert.ok(canTransition(s, 'pausing'));
      if (allows('resume', s)) assert.ok(canTransition(s, 'resuming'));
      if (allows('claim', s)) assert.ok(canTransition(s, 'creating'));
    }
  });

  it('rule 9: every transitional state has a deadline; settled states have none', () => {
    for (const s of ['creating', 'pausing', 'resuming', 'deleting'] as const) {
      assert.ok((STATE_DEADLINE_MS[s] ?? 0) > 20_000, s); // longer than one runtime call's timeout
      assert.equal(deadlineFor(s, 1000), 1000 + STATE_DEADLINE_MS[s]!);
    }
    for (const s of ['running', 'paused', 'pooled', 'stopped', 'failed'] as const) assert.equal(deadlineFor(s, 1000), null);
  });

  it("maps to E2B's states: stopped, failed and deleting show as paused with cubeboxState; pooled is hidden", () => {
    assert.equal(e2bStateOf('creating'), 'running');
    assert.equal(e2bStateOf('pausing'), 'running');
    assert.equal(e2bStateOf('resuming'), 'paused');
    assert.equal(e2bStateOf('pooled'), undefined);
    for (const s of ['stopped', 'failed', 'deleting'] as const) {
      assert.equal(e2bStateOf(s), 'paused');
      assert.equal(cubeboxStateShown(s), s);
    }
    assert.equal(cubeboxStateShown('running'), undefined);
  });
});
