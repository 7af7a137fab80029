// TypeScript to JavaScript for typescript contexts (types removed, nothing checked). A bundle
// of its own, loaded by the Node kernel only when a cell is TypeScript.
import ts from 'typescript';

export function stripTypes(code: string): string {
  return ts.transpileModule(code, {
    compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext, removeComments: false },
    reportDiagnostics: false,
  }).outputText;
}
