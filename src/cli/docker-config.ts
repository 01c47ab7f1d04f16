import { SYSTEM_PLUGIN_DIRS, berthPluginLinks, removeCliPlugins } from '../daemon/cli-plugins.js';
import { describeDockerContext, dockerConfigDir, unregisterDockerContext } from '../daemon/docker-context.js';
import type { BerthPaths } from '../settings/paths.js';
import type { Out } from './render.js';

/**
 * `berth docker-config show | remove`: what berth adds to the user's docker configuration (the
 * `berth` context, links to the engine's compose and buildx plugins) and taking it away again
 * (docs/engine-packs.md "On the host").
 */
export async function dockerConfigShow(paths: BerthPaths, opts: { json: boolean }, out: Out): Promise<number> {
  const ctx = await describeDockerContext();
  const links = await berthPluginLinks({ berthDir: paths.cliPluginsDir });
  if (opts.json) {
    out.write(JSON.stringify({ dockerConfig: dockerConfigDir(), context: ctx, pluginLinks: links }, null, 2) + '\n');
    return 0;
  }
  out.write(`docker configuration: ${dockerConfigDir()}\n`);
  out.write(`context "berth":      ${ctx.exists ? `registered${ctx.current ? ', the current context' : ''} (${ctx.metaDir})` : 'not registered'}\n`);
  out.write(`plugin links:         ${links.length > 0 ? links.join(', ') : 'none'}\n`);
  out.write(`(berth never changes plugins in ${SYSTEM_PLUGIN_DIRS.join(', ')} or plugins of your own; \`berth docker-config remove\` takes away what is listed here)\n`);
  return 0;
}

export async function dockerConfigRemove(paths: BerthPaths, opts: { json: boolean }, out: Out): Promise<number> {
  const ctx = await unregisterDockerContext();
  const links = await removeCliPlugins({ berthDir: paths.cliPluginsDir });
  if (opts.json) {
    out.write(JSON.stringify({ context: ctx, removedPluginLinks: links }) + '\n');
    return 0;
  }
  out.write(ctx.removed ? `Removed the docker context "berth"${ctx.wasCurrent ? ' (it was the current one; the docker CLI is back to its default)' : ''}.\n` : 'No docker context "berth" to remove.\n');
  out.write(links.length > 0 ? `Removed the plugin links ${links.join(', ')}.\n` : 'No plugin links of berth\'s to remove.\n');
  out.write('berth start adds them again; to stop it linking plugins: berth settings set docker.cliPlugins false\n');
  return 0;
}
