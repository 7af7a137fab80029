// GET /openapi.json describes every control-plane route from the schemas that validate it, and
// agrees with the published SDK's own OpenAPI types (`paths` in e2b's index.d.ts, read with the
// TypeScript compiler): every path and method the SDK knows is served here or listed below as a
// known gap, and no body field we require or declare is one the SDK does not have.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Fastify, { type FastifyInstance } from 'fastify';
import ts from 'typescript';
import { CONTROL_PLANE_AJV, registerControlPlane, type ControlPlaneOptions } from '../../src/api/control-plane.js';
import { fakeNode } from '../helpers/fake-node.js';
import type { TemplateBuilds } from '../../src/builder/builds.js';

/** SDK routes cubebox does not serve yet, and why. A route served since must leave this list. */
const KNOWN_GAPS: Record<string, string> = {};

interface SdkOperation {
  /** Fields a JSON body must have (absent: no JSON body). */
  required?: string[];
  /** Every field the JSON body may have. */
  fields?: string[];
}

/** `/sandboxes/{sandboxID}` and `/sandboxes/{id}` alike: parameter names differ between the SDK and us. */
const shape = (path: string) => path.replace(/\{[^}]*\}/g, '{}');

/** The SDK's control-plane operations, from the `paths` interface of its published type declarations. */
let sdkOps: Map<string, SdkOperation> | undefined;
const sdkOperations = () => (sdkOps ??= readSdkOperations());
function readSdkOperations(): Map<string, SdkOperation> {
  const dts = join(dirname(createRequire(import.meta.url).resolve('e2b')), 'index.d.ts');
  const program = ts.createProgram([dts], { noResolve: true, skipLibCheck: true, types: [] });
  const checker = program.getTypeChecker();
  const file = program.getSourceFile(dts)!;
  const paths = file.statements.find((s): s is ts.InterfaceDeclaration => ts.isInterfaceDeclaration(s) && s.name.text === 'paths');
  assert.ok(paths, "the SDK's type declarations have a `paths` interface");
  const prop = (t: ts.Type, name: string) => {
    const p = t.getProperty(name);
    return p && checker.getTypeOfSymbol(p);
  };
  const ops = new Map<string, SdkOperation>();
  for (const member of paths.members) {
    if (!ts.isPropertySignature(member) || !member.type || !ts.isTypeLiteralNode(member.type)) continue;
    const path = (member.name as ts.StringLiteral).text;
    for (const m of member.type.members) {
      if (!ts.isPropertySignature(m) || !m.type || m.type.kind === ts.SyntaxKind.NeverKeyword) continue;
      const method = (m.name as ts.Identifier).text;
      if (method === 'parameters') continue;
      const op: SdkOperation = {};
      const body = prop(checker.getTypeFromTypeNode(m.type), 'requestBody');
      const json = body && prop(checker.getNonNullableType(body), 'content');
      const schema = json && prop(json, 'application/json');
      if (schema) {
        const props = checker.getPropertiesOfType(schema);
        op.fields = props.map((p) => p.name).sort();
        op.required = props
          .filter((p) => !(p.flags & ts.SymbolFlags.Optional))
          .map((p) => p.name)
          .sort();
      }
      ops.set(`${method.toUpperCase()} ${shape(path)}`, op);
    }
  }
  return ops;
}

type Doc = {
  openapi: string;
  paths: Record<string, Record<string, { requestBody?: { content: Record<string, { schema: { required?: string[]; properties?: object } }> }; security?: [] }>>;
};

const opts: ControlPlaneOptions = {
  node: {
    ...fakeNode({
      templates: { find: () => undefined, list: () => [] },
      sandboxes: { get: () => assert.fail('no sandbox'), list: () => [] },
      keys: { authenticate: async (k) => (k === 'k' ? { keyId: 'k', keyPrefix: 'e2b_x', team: 'default', admin: false } : undefined) },
    }),
    builds: {} as TemplateBuilds, // the build routes are registered; none is called here
  },
  domain: 'example.test',
  clientId: 'c',
  prometheus: async () => ({ contentType: 'text/plain', body: '' }),
};

describe('the OpenAPI document', () => {
  let app: FastifyInstance;
  let doc: Doc;
  before(async () => {
    app = Fastify({ logger: false, ajv: CONTROL_PLANE_AJV });
    registerControlPlane(app, opts);
    // a route registered later, by any file, appears without being named anywhere
    const body = { type: 'object', required: ['x'], properties: { x: { type: 'integer' } } };
    app.post('/later/:thing', { schema: { body, summary: 'a later route', security: [{ VolumeToken: [] }] } }, async () => ({}));
    await app.ready();
    const r = await app.inject({ method: 'GET', url: '/openapi.json' });
    assert.equal(r.statusCode, 200, 'served without an API key');
    doc = r.json<Doc>();
  });
  after(() => app.close());

  it('is OpenAPI 3.1 made from the routes and their schemas', () => {
    assert.equal(doc.openapi, '3.1.0');
    type Op = { parameters: { name: string; in: string }[]; requestBody: { required: boolean }; summary: string; security: object[] };
    const later = doc.paths['/later/{thing}']?.post as unknown as Op;
    assert.equal(later.summary, 'a later route');
    assert.deepEqual(later.security, [{ VolumeToken: [] }], 'a route authenticated otherwise says so in its schema');
    assert.deepEqual(
      later.parameters.map((p) => [p.name, p.in]),
      [['thing', 'path']],
    );
    assert.equal(later.requestBody.required, true);
    // the body schema in the document is the one that validates: a request the document calls invalid is refused
    const secret = doc.paths['/secrets']!.post!.requestBody!.content['application/json']!.schema;
    assert.deepEqual(secret.required, ['name', 'value']);
    assert.deepEqual(doc.paths['/openapi.json']!.get!.security, [], 'the document itself needs no key');
    assert.deepEqual(doc.paths['/health']!.get!.security, []);
    assert.equal(doc.paths['/secrets']!.get!.security, undefined, 'secrets need the key (the document-wide ApiKeyAuth)');
    assert.equal(doc.paths['/sandboxes/{id}']?.head, undefined, "fastify's implicit HEAD routes are left out");
  });

  it('refuses what the document says is invalid, with the same schema', async () => {
    const r = await app.inject({ method: 'POST', url: '/secrets', headers: { 'x-api-key': 'k', 'content-type': 'application/json' }, payload: '{"name":"a"}' });
    assert.equal(r.statusCode, 400);
    assert.deepEqual(r.json(), { code: 400, message: 'value is required' });
  });

  it("covers every route of the SDK's types, but for the known gaps", () => {
    const sdk = sdkOperations();
    assert.ok(sdk.size > 40, `read ${sdk.size} operations from the SDK's types`);
    const ours = new Set(Object.entries(doc.paths).flatMap(([p, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${shape(p)}`)));
    const missing = [...sdk.keys()].filter((k) => !ours.has(k)).sort();
    const listed = Object.keys(KNOWN_GAPS).sort();
    assert.deepEqual(
      missing.filter((k) => !KNOWN_GAPS[k]),
      [],
      'SDK routes neither served nor listed in KNOWN_GAPS',
    );
    assert.deepEqual(
      listed.filter((k) => !missing.includes(k)),
      [],
      'KNOWN_GAPS entries that are served now (or that the SDK no longer has): remove them',
    );
  });

  it("requires and declares only body fields the SDK's types have", () => {
    const sdk = sdkOperations();
    let compared = 0;
    for (const [path, ops] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        const theirs = sdk.get(`${method.toUpperCase()} ${shape(path)}`);
        const schema = op.requestBody?.content['application/json']?.schema;
        if (!theirs || !schema) continue;
        compared++;
        const where = `${method.toUpperCase()} ${path}`;
        assert.ok(theirs.fields, `${where}: we read a JSON body the SDK does not send`);
        for (const f of schema.required ?? []) assert.ok(theirs.required!.includes(f), `${where}: we require '${f}', the SDK may leave it out`);
        for (const f of Object.keys(schema.properties ?? {})) assert.ok(theirs.fields.includes(f), `${where}: we declare '${f}', the SDK has no such field`);
      }
    }
    assert.ok(compared >= 8, `compared ${compared} request bodies`);
  });
});
