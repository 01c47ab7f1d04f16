/**
 * For daemon/vm-controller.ts only: the engine client lives in docker/engine-client.ts (exported
 * by docker/index.ts). Delete this file once vm-controller.ts imports dockerJson from there.
 */
export { dockerJson } from '../docker/engine-client.js';
