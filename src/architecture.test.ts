import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

/**
 * Import rules between folders (docs/ARCHITECTURE.md), checked on the TypeScript sources:
 * - production code (every file under src/ but *.test.ts) never reaches into test/;
 * - the guest agent (src/agent/) uses only src/agent, src/control and src/util, since those are
 *   what the agent bundle may contain; src/control uses only itself and src/util; src/util only
 *   itself.
 * A reference is any relative module specifier: import and export declarations (type-only ones
 * too), `import()`, `require()`, and `new URL('…', import.meta.url)` (worker scripts).
 */

// This file runs as dist/src/architecture.test.js; the sources are in <root>/src.
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const srcDir = path.join(root, 'src');

/** References the rules let through although they break them, as "from -> to". */
const ALLOWED = new Set<string>([]);

interface Ref {
  /** Repository-relative, with '/' separators: "src/agent/main.ts". */
  from: string;
  /** The referenced file, repository-relative, with a .js specifier mapped to its .ts source. */
  to: string;
}

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...sourceFiles(p));
    else if (e.isFile() && e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

function rel(p: string): string {
  return path.relative(root, p).split(path.sep).join('/');
}

function specifiers(file: string): string[] {
  const sf = ts.createSourceFile(file, fs.readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, false, ts.ScriptKind.TS);
  const out: string[] = [];
  const visit = (node: ts.Node): void => {
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      out.push(node.moduleSpecifier.text);
    } else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference) && ts.isStringLiteral(node.moduleReference.expression)) {
      out.push(node.moduleReference.expression.text);
    } else if (ts.isCallExpression(node)) {
      const isImport = node.expression.kind === ts.SyntaxKind.ImportKeyword;
      const isRequire = ts.isIdentifier(node.expression) && node.expression.text === 'require';
      const arg = node.arguments[0];
      if ((isImport || isRequire) && arg && ts.isStringLiteralLike(arg)) out.push(arg.text);
    } else if (ts.isNewExpression(node) && ts.isIdentifier(node.expression) && node.expression.text === 'URL') {
      const [arg, base] = node.arguments ?? [];
      if (arg && ts.isStringLiteralLike(arg) && base && base.getText(sf) === 'import.meta.url') out.push(arg.text);
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument) && ts.isStringLiteral(node.argument.literal)) {
      out.push(node.argument.literal.text);
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

function references(): Ref[] {
  const refs: Ref[] = [];
  for (const file of sourceFiles(srcDir)) {
    for (const spec of specifiers(file)) {
      if (!spec.startsWith('./') && !spec.startsWith('../')) continue; // node: builtins and packages
      const target = path.resolve(path.dirname(file), spec).replace(/\.js$/, '.ts');
      refs.push({ from: rel(file), to: rel(target) });
    }
  }
  return refs;
}

const isTest = (f: string): boolean => f.endsWith('.test.ts');
const under = (f: string, dir: string): boolean => f.startsWith(`${dir}/`);

/** The references that break a rule and are not in ALLOWED, as "from -> to" lines. */
function violations(refs: Ref[], applies: (from: string) => boolean, allowed: (to: string) => boolean): string[] {
  return refs
    .filter((r) => applies(r.from) && !allowed(r.to))
    .map((r) => `${r.from} -> ${r.to}`)
    .filter((line) => !ALLOWED.has(line));
}

const refs = references();

test('architecture: the import scan sees the source tree (a known import is found)', () => {
  assert.ok(fs.existsSync(srcDir), `no source tree at ${srcDir}`);
  assert.ok(
    refs.some((r) => r.from === 'src/agent/main.ts' && r.to === 'src/control/mux.ts'),
    'src/agent/main.ts -> src/control/mux.ts was not found: the scan is broken',
  );
  assert.ok(
    refs.some((r) => r.from === 'src/net/net-service.ts' && r.to === 'src/net/net-worker.ts'),
    "new URL('./net-worker.js', import.meta.url) in src/net/net-service.ts was not found: the scan is broken",
  );
});

test('architecture: no production file under src/ imports from test/', () => {
  const bad = violations(refs, (from) => under(from, 'src') && !isTest(from), (to) => !under(to, 'test'));
  assert.deepEqual(bad, [], 'test support is for *.test.ts files only');
});

test('architecture: the guest agent imports only src/agent, src/control and src/util', () => {
  const bad = violations(
    refs,
    (from) => under(from, 'src/agent') && !isTest(from),
    (to) => under(to, 'src/agent') || under(to, 'src/control') || under(to, 'src/util'),
  );
  assert.deepEqual(bad, [], 'the agent bundle runs in the guest: it must not pull in host modules');
});

test('architecture: src/control imports only src/control and src/util; src/util only itself', () => {
  const bad = [
    ...violations(refs, (from) => under(from, 'src/control') && !isTest(from), (to) => under(to, 'src/control') || under(to, 'src/util')),
    ...violations(refs, (from) => under(from, 'src/util') && !isTest(from), (to) => under(to, 'src/util')),
  ];
  assert.deepEqual(bad, [], 'control/ and util/ are shared with the guest agent and sit below every other folder');
});

test('architecture: the state machine and the running guest reach the backend only through the driver seam', () => {
  const seamUsers = new Set(['src/daemon/vm-controller.ts', 'src/daemon/running-guest.ts']);
  const bad = violations(refs, (from) => seamUsers.has(from), (to) => !under(to, 'src/vm') || to === 'src/vm/driver.ts');
  assert.deepEqual(bad, [], 'QEMU (or any other backend) belongs behind src/vm/driver.ts (docs/backends.md)');
});
