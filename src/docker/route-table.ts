/**
 * dockerd's routes in the order its router registers them (moby v20.10.24, with the one route
 * v26.1.5 adds; cmd/dockerd/daemon.go initRouter, each router's initRoutes, then the debug
 * routes), and what each handler does with the request body (docs/docker-proxy.md step 4).
 * Order matters: gorilla/mux runs the first route that matches, and `{name:.*}` swallows slashes
 * (the checkpoint routes come first so that DELETE /containers/x/checkpoints/y is theirs).
 */
export type BodyKind =
  /** The handler never reads a body: it is dropped. */
  | 'none'
  /** JSON no decision depends on: it must parse, and is passed on as sent. */
  | 'json'
  /** Bytes passed on as they come (a tar, an image archive), re-framed. */
  | 'stream'
  /** Checked JSON, decoded with Go's rules and serialized again from the checked value. */
  | 'container-create'
  | 'volume-create'
  | 'service-spec'
  | 'plugin-privileges'
  | 'plugin-set'
  /** A plugin archive: streamed, its config.json checked before dockerd gets its end. */
  | 'plugin-archive'
  /** No body; the plugin's effective mounts and devices (GET /plugins/{name}/json) are checked first. */
  | 'plugin-enable';

export interface RouteSpec {
  /** The HTTP method; '*' for the debug routes, which dockerd registers without one. */
  method: string;
  /** A gorilla/mux template. */
  path: string;
  body: BodyKind;
  /** The connection may become a raw stream after the response (attach, exec, session, grpc). */
  hijack?: true;
  /** Held before it is sent: a container (re)start or an exec start (proxy.ts BeforeRun). */
  hook?: 'start' | 'exec';
  /** berth refuses the route, with this reason. */
  refuse?: string;
  /** Registered without the /v{version} prefix (the debug routes). */
  unversioned?: true;
}

const CHECKPOINTS = 'checkpoints are an experimental feature of dockerd that berth does not enable (a checkpoint directory is a path in the VM)';

export const ROUTES: readonly RouteSpec[] = [
  { method: 'GET', path: '/containers/{name:.*}/checkpoints', body: 'none', refuse: CHECKPOINTS },
  { method: 'POST', path: '/containers/{name:.*}/checkpoints', body: 'none', refuse: CHECKPOINTS },
  { method: 'DELETE', path: '/containers/{name}/checkpoints/{checkpoint}', body: 'none', refuse: CHECKPOINTS },
  { method: 'HEAD', path: '/containers/{name:.*}/archive', body: 'none' },
  { method: 'GET', path: '/containers/json', body: 'none' },
  { method: 'GET', path: '/containers/{name:.*}/export', body: 'none' },
  { method: 'GET', path: '/containers/{name:.*}/changes', body: 'none' },
  { method: 'GET', path: '/containers/{name:.*}/json', body: 'none' },
  { method: 'GET', path: '/containers/{name:.*}/top', body: 'none' },
  { method: 'GET', path: '/containers/{name:.*}/logs', body: 'none' },
  { method: 'GET', path: '/containers/{name:.*}/stats', body: 'none' },
  { method: 'GET', path: '/containers/{name:.*}/attach/ws', body: 'none', hijack: true },
  { method: 'GET', path: '/exec/{id:.*}/json', body: 'none' },
  { method: 'GET', path: '/containers/{name:.*}/archive', body: 'none' },
  { method: 'POST', path: '/containers/create', body: 'container-create' },
  { method: 'POST', path: '/containers/{name:.*}/kill', body: 'none' },
  { method: 'POST', path: '/containers/{name:.*}/pause', body: 'none' },
  { method: 'POST', path: '/containers/{name:.*}/unpause', body: 'none' },
  { method: 'POST', path: '/containers/{name:.*}/restart', body: 'none', hook: 'start' },
  { method: 'POST', path: '/containers/{name:.*}/start', body: 'none', hook: 'start' },
  { method: 'POST', path: '/containers/{name:.*}/stop', body: 'none' },
  { method: 'POST', path: '/containers/{name:.*}/wait', body: 'none' },
  { method: 'POST', path: '/containers/{name:.*}/resize', body: 'none' },
  { method: 'POST', path: '/containers/{name:.*}/attach', body: 'none', hijack: true },
  { method: 'POST', path: '/containers/{name:.*}/copy', body: 'none' }, // 20.10 only; API < 1.24 (refused before routing)
  { method: 'POST', path: '/containers/{name:.*}/exec', body: 'json' },
  { method: 'POST', path: '/exec/{name:.*}/start', body: 'json', hijack: true, hook: 'exec' },
  { method: 'POST', path: '/exec/{name:.*}/resize', body: 'none' },
  { method: 'POST', path: '/containers/{name:.*}/rename', body: 'none' },
  { method: 'POST', path: '/containers/{name:.*}/update', body: 'json' },
  { method: 'POST', path: '/containers/prune', body: 'none' },
  { method: 'POST', path: '/commit', body: 'json' },
  { method: 'PUT', path: '/containers/{name:.*}/archive', body: 'stream' },
  { method: 'DELETE', path: '/containers/{name:.*}', body: 'none' },
  { method: 'GET', path: '/images/json', body: 'none' },
  { method: 'GET', path: '/images/search', body: 'none' },
  { method: 'GET', path: '/images/get', body: 'none' },
  { method: 'GET', path: '/images/{name:.*}/get', body: 'none' },
  { method: 'GET', path: '/images/{name:.*}/history', body: 'none' },
  { method: 'GET', path: '/images/{name:.*}/json', body: 'none' },
  { method: 'POST', path: '/images/load', body: 'stream' },
  { method: 'POST', path: '/images/create', body: 'stream' },
  { method: 'POST', path: '/images/{name:.*}/push', body: 'none' },
  { method: 'POST', path: '/images/{name:.*}/tag', body: 'none' },
  { method: 'POST', path: '/images/prune', body: 'none' },
  { method: 'DELETE', path: '/images/{name:.*}', body: 'none' },
  { method: 'OPTIONS', path: '/{anyroute:.*}', body: 'none' },
  { method: 'GET', path: '/_ping', body: 'none' },
  { method: 'HEAD', path: '/_ping', body: 'none' },
  { method: 'GET', path: '/events', body: 'none' },
  { method: 'GET', path: '/info', body: 'none' },
  { method: 'GET', path: '/version', body: 'none' },
  { method: 'GET', path: '/system/df', body: 'none' },
  { method: 'POST', path: '/auth', body: 'json' },
  { method: 'GET', path: '/volumes', body: 'none' },
  { method: 'GET', path: '/volumes/{name:.*}', body: 'none' },
  { method: 'POST', path: '/volumes/create', body: 'volume-create' },
  { method: 'POST', path: '/volumes/prune', body: 'none' },
  { method: 'DELETE', path: '/volumes/{name:.*}', body: 'none' },
  { method: 'PUT', path: '/volumes/{name:.*}', body: 'json' }, // 26.1 (cluster volumes)
  { method: 'POST', path: '/build', body: 'stream' },
  { method: 'POST', path: '/build/prune', body: 'none' },
  { method: 'POST', path: '/build/cancel', body: 'none' },
  { method: 'POST', path: '/session', body: 'none', hijack: true },
  { method: 'POST', path: '/swarm/init', body: 'json' },
  { method: 'POST', path: '/swarm/join', body: 'json' },
  { method: 'POST', path: '/swarm/leave', body: 'none' },
  { method: 'GET', path: '/swarm', body: 'none' },
  { method: 'GET', path: '/swarm/unlockkey', body: 'none' },
  { method: 'POST', path: '/swarm/update', body: 'json' },
  { method: 'POST', path: '/swarm/unlock', body: 'json' },
  { method: 'GET', path: '/services', body: 'none' },
  { method: 'GET', path: '/services/{id}', body: 'none' },
  { method: 'POST', path: '/services/create', body: 'service-spec' },
  { method: 'POST', path: '/services/{id}/update', body: 'service-spec' },
  { method: 'DELETE', path: '/services/{id}', body: 'none' },
  { method: 'GET', path: '/services/{id}/logs', body: 'none' },
  { method: 'GET', path: '/nodes', body: 'none' },
  { method: 'GET', path: '/nodes/{id}', body: 'none' },
  { method: 'DELETE', path: '/nodes/{id}', body: 'none' },
  { method: 'POST', path: '/nodes/{id}/update', body: 'json' },
  { method: 'GET', path: '/tasks', body: 'none' },
  { method: 'GET', path: '/tasks/{id}', body: 'none' },
  { method: 'GET', path: '/tasks/{id}/logs', body: 'none' },
  { method: 'GET', path: '/secrets', body: 'none' },
  { method: 'POST', path: '/secrets/create', body: 'json' },
  { method: 'DELETE', path: '/secrets/{id}', body: 'none' },
  { method: 'GET', path: '/secrets/{id}', body: 'none' },
  { method: 'POST', path: '/secrets/{id}/update', body: 'json' },
  { method: 'GET', path: '/configs', body: 'none' },
  { method: 'POST', path: '/configs/create', body: 'json' },
  { method: 'DELETE', path: '/configs/{id}', body: 'none' },
  { method: 'GET', path: '/configs/{id}', body: 'none' },
  { method: 'POST', path: '/configs/{id}/update', body: 'json' },
  { method: 'GET', path: '/plugins', body: 'none' },
  { method: 'GET', path: '/plugins/{name:.*}/json', body: 'none' },
  { method: 'GET', path: '/plugins/privileges', body: 'none' },
  { method: 'DELETE', path: '/plugins/{name:.*}', body: 'none' },
  { method: 'POST', path: '/plugins/{name:.*}/enable', body: 'plugin-enable' },
  { method: 'POST', path: '/plugins/{name:.*}/disable', body: 'none' },
  { method: 'POST', path: '/plugins/pull', body: 'plugin-privileges' },
  { method: 'POST', path: '/plugins/{name:.*}/push', body: 'none' },
  { method: 'POST', path: '/plugins/{name:.*}/upgrade', body: 'plugin-privileges' },
  { method: 'POST', path: '/plugins/{name:.*}/set', body: 'plugin-set' },
  { method: 'POST', path: '/plugins/create', body: 'plugin-archive' },
  { method: 'GET', path: '/distribution/{name:.*}/json', body: 'none' },
  { method: 'POST', path: '/grpc', body: 'none', hijack: true },
  { method: 'GET', path: '/networks', body: 'none' },
  { method: 'GET', path: '/networks/', body: 'none' },
  { method: 'GET', path: '/networks/{id:.+}', body: 'none' },
  { method: 'POST', path: '/networks/create', body: 'json' },
  { method: 'POST', path: '/networks/{id:.*}/connect', body: 'json' },
  { method: 'POST', path: '/networks/{id:.*}/disconnect', body: 'json' },
  { method: 'POST', path: '/networks/prune', body: 'none' },
  { method: 'DELETE', path: '/networks/{id:.*}', body: 'none' },
  { method: 'GET', path: '/vars', body: 'none' },  // debug
  { method: 'GET', path: '/pprof/', body: 'none' },  // debug
  { method: 'GET', path: '/pprof/cmdline', body: 'none' },  // debug
  { method: 'GET', path: '/pprof/profile', body: 'none' },  // debug
  { method: 'GET', path: '/pprof/symbol', body: 'none' },  // debug
  { method: 'GET', path: '/pprof/trace', body: 'none' },  // debug
  { method: 'GET', path: '/pprof/{name}', body: 'none' },  // debug
  { method: '*', path: '/debug/vars', body: 'none', unversioned: true },
  { method: '*', path: '/debug/pprof/', body: 'none', unversioned: true },
  { method: '*', path: '/debug/pprof/cmdline', body: 'none', unversioned: true },
  { method: '*', path: '/debug/pprof/profile', body: 'none', unversioned: true },
  { method: '*', path: '/debug/pprof/symbol', body: 'none', unversioned: true },
  { method: '*', path: '/debug/pprof/trace', body: 'none', unversioned: true },
  { method: '*', path: '/debug/pprof/{name}', body: 'none', unversioned: true },
];
