// What E2B's build requests compile to (steps, base, cache keys) and the check of uploaded
// files' tar paths: plain functions, no sandbox.
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { baseOf, compileSteps } from '../../src/builder/e2b-steps.js';
import { localTemplateFor as localImage } from '../../src/template/image-source.js';
import { layerKey, runArgv, type BuildStep, type FileSource, type StepSettings } from '../../src/builder/steps.js';
import { TarReader } from '../../src/builder/tar-check.js';

const files = (hash: string): FileSource | undefined => (hash === 'h'.repeat(64) ? { hash, open: () => Readable.from([]) } : undefined);
const HASH = 'h'.repeat(64);

/** A tar of one entry: a ustar header (name, type, link) and its content, then the end blocks. */
function tarOf(name: string, type = '0', content = '', link = ''): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 100);
  h.write('0000644\0', 100);
  h.write('0000000\0', 108);
  h.write('0000000\0', 116);
  h.write(content.length.toString(8).padStart(11, '0') + '\0', 124);
  h.write('00000000000\0', 136);
  h.write(type, 156);
  h.write(link, 157, 100);
  h.write('ustar\0' + '00', 257);
  h.fill(' ', 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
  const body = Buffer.alloc(Math.ceil(content.length / 512) * 512);
  body.write(content);
  return Buffer.concat([h, body, Buffer.alloc(1024)]);
}

const check = (buf: Buffer) => {
  const r = new TarReader({ maxEntries: 10, maxBytes: 1 << 20 });
  // fed in small pieces: headers split across chunks are read whole
  for (let i = 0; i < buf.length; i += 100) {
    const err = r.push(buf.subarray(i, i + 100));
    if (err) return err;
  }
  return r.finish();
};

describe('template build steps', () => {
  it('compiles each E2B step type, the SDK helpers arriving as RUN', () => {
    const steps = compileSteps(
      {
        fromTemplate: 'base',
        steps: [
          { type: 'RUN', args: ['apt-get update && apt-get install -y git', 'root'] },
          { type: 'COPY', args: ['app/', '/opt/app', 'user:user', '0750'], filesHash: HASH },
          { type: 'ENV', args: ['A', '1', 'B', 'two words'] },
          { type: 'WORKDIR', args: ['/opt/app'] },
          { type: 'USER', args: ['user'] },
        ],
        startCmd: 'node server.js',
        readyCmd: 'curl -sf localhost:3000',
      },
      files,
    );
    assert.deepEqual(
      steps.map((s) => s.kind),
      ['run', 'copy', 'env', 'workdir', 'user', 'start', 'ready'],
    );
    assert.deepEqual(steps[0], { kind: 'run', cmd: 'apt-get update && apt-get install -y git', user: 'root', force: false });
    const copy = steps[1] as Extract<BuildStep, { kind: 'copy' }>;
    assert.deepEqual([copy.src, copy.dest, copy.owner, copy.mode], ['app', '/opt/app', 'user:user', '0750']);
    assert.deepEqual(steps[2], { kind: 'env', env: { A: '1', B: 'two words' } });
  });

  it('refuses unknown steps, copies outside the context or never uploaded, and bad modes or users', () => {
    const refuse = (step: object, re: RegExp) => assert.throws(() => compileSteps({ fromTemplate: 'base', steps: [step as never] }, files), re);
    refuse({ type: 'FROB', args: [] }, /unknown step type 'FROB'/);
    refuse({ type: 'COPY', args: ['../secret', '/x'], filesHash: HASH }, /outside the build context/);
    refuse({ type: 'COPY', args: ['/etc/passwd', '/x'], filesHash: HASH }, /outside the build context/);
    refuse({ type: 'COPY', args: ['app', '/x'], filesHash: 'f'.repeat(64) }, /never uploaded/);
    refuse({ type: 'COPY', args: ['app', '/x', '', '0999'], filesHash: HASH }, /not an octal file mode/);
    refuse({ type: 'RUN', args: ['true', 'root; rm -rf /'] }, /not a user name/);
    refuse({ type: 'ENV', args: ['A'] }, /name and value pairs/);
  });

  it('maps e2bdev images to the local templates and refuses AWS and GCP registries', () => {
    assert.deepEqual(baseOf({ fromImage: 'e2bdev/base' }), { template: 'base' });
    assert.deepEqual(baseOf({ fromImage: 'docker.io/e2bdev/code-interpreter:latest' }), { template: 'code-interpreter-v1' });
    assert.equal(localImage('python:3.12'), undefined);
    assert.deepEqual(baseOf({ fromImage: 'python:3.12' }), { image: 'python:3.12', registry: undefined });
    assert.throws(() => baseOf({ fromImage: 'x', fromImageRegistry: { type: 'aws' } }), /type 'aws' is not supported/);
    assert.throws(() => baseOf({ fromImage: 'x', fromImageRegistry: { type: 'gcp' } }), /type 'gcp' is not supported/);
    assert.throws(() => baseOf({ fromImage: 'x', fromTemplate: 'base' }), /exactly one/);
    assert.throws(() => baseOf({}), /exactly one/);
  });

  it('keys a layer by parent, team, step, settings and files', () => {
    const settings: StepSettings = { env: { A: '1' }, user: 'user', workdir: '/home/user' };
    const run: BuildStep = { kind: 'run', cmd: 'echo hi' };
    const copy = (hash: string): BuildStep => ({ kind: 'copy', src: 'app', dest: '/app', files: { hash, open: () => Readable.from([]) } });
    const k = layerKey('parent', 'team-a', run, settings);
    assert.equal(layerKey('parent', 'team-a', run, { ...settings }), k, 'the same inputs, the same key');
    assert.notEqual(layerKey('other', 'team-a', run, settings), k);
    assert.notEqual(layerKey('parent', 'team-b', run, settings), k, 'never another team layer');
    assert.notEqual(layerKey('parent', 'team-a', { kind: 'run', cmd: 'echo hi', user: 'root' }, settings), k);
    assert.notEqual(layerKey('parent', 'team-a', run, { ...settings, env: { A: '2' } }), k);
    assert.notEqual(layerKey('parent', 'team-a', copy('a'), settings), layerKey('parent', 'team-a', copy('b'), settings));
  });

  it('runs a step as root or through su as the user, in the working directory', () => {
    const settings: StepSettings = { env: {}, user: 'user', workdir: '/srv' };
    assert.deepEqual(runArgv({ kind: 'run', cmd: 'make', user: 'root' }, settings).slice(0, 2), ['/bin/sh', '-c']);
    const asUser = runArgv({ kind: 'run', cmd: 'make' }, settings);
    assert.deepEqual(asUser.slice(0, 4), ['su', '-s', '/bin/sh', 'user']);
    assert.match(asUser[5]!, /cd '\/srv' && make$/);
  });

  it('takes tars whose paths stay in the context, symlinks anywhere included', () => {
    assert.equal(check(tarOf('app/hello.txt', '0', 'hello\n')), undefined);
    assert.equal(check(tarOf('./app/', '5')), undefined);
    assert.equal(check(tarOf('app/link', '2', '', '/etc/passwd')), undefined, 'a symlink only points inside the build sandbox');
  });

  it('refuses tars with paths or hard links outside the context, devices, a cut-off entry, or what is no tar', () => {
    assert.match(check(tarOf('../evil', '0', 'x'))!, /outside the build context/);
    assert.match(check(tarOf('/etc/cron.d/x', '0', 'x'))!, /outside the build context/);
    assert.match(check(tarOf('app/../../x', '0', 'x'))!, /outside the build context/);
    assert.match(check(tarOf('app/h', '1', '', '../../etc/shadow'))!, /hard link outside/);
    assert.match(check(tarOf('dev/sda', '3'))!, /kind builds do not take/);
    assert.match(check(Buffer.from('not a tar at all'))!, /not a (whole )?tar archive/);
    assert.match(check(Buffer.alloc(512, 'x'))!, /checksum is wrong/);
    const whole = tarOf('app/big', '0', 'x'.repeat(2000));
    assert.match(check(whole.subarray(0, 1024))!, /ends inside an entry/);
  });
});
