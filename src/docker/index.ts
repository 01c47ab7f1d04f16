/** The Docker API socket: the proxy and the decisions it takes (docs/docker-proxy.md). */
export { DockerProxy, type ApiHealth, type BeforeRun, type HeldRun, type StreamOpener } from './proxy.js';
export { DEFAULT_VM_PATHS, type MountPolicy } from './mount-policy.js';
