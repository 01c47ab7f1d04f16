// Bundles the guest agent (src/agent/main.ts and what it imports, e.g. src/control/) into one
// CommonJS file for the guest's Node 18: dist/agent.cjs. The image builder installs it at
// /usr/lib/berth/agent.cjs, and its hash is part of the image cache key.
import { build } from 'esbuild';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
await build({
  entryPoints: [join(root, 'src', 'agent', 'main.ts')],
  outfile: join(root, 'dist', 'agent.cjs'),
  bundle: true,
  platform: 'node',
  target: 'node18',
  format: 'cjs',
  sourcemap: false,
  minify: false,
  legalComments: 'none',
  logLevel: 'warning',
});
