/** Docker in berth: the API socket, the decisions it takes (docs/docker-proxy.md), and a client of the engine's API. */
export { DockerProxy, type ApiHealth, type BeforeRun, type HeldRun } from './proxy.js';
export { DEFAULT_VM_PATHS, type MountPolicy } from './mount-policy.js';
export { DockerApiError, dockerJson, followEvents, isRunning, type StreamOpener } from './engine-client.js';
