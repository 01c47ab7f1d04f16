import fs from 'node:fs';
import { resolvePaths } from '../settings/paths.js';
import { Logger } from '../util/log.js';
import { toBerthError } from '../util/errors.js';
import { acquireDaemonLock } from './lock.js';
import { ApiServer } from './api-server.js';
import { VmController } from './vm-controller.js';
import { BuilderImageSource } from './image-source.js';
import { QemuDriver } from '../vm/qemu-driver.js';
import { NamespaceDriver } from '../vm/namespace/driver.js';

/**
 * The berth daemon: one per berth home, started in the background by the CLI (`berth start`,
 * `berth status` when a VM is found running). Owns the VM; survives a crashed VM or agent; exits
 * after a clean `berth stop`. A daemon killed with -9 leaves QEMU running, and the next daemon
 * re-attaches to it (VmController.adoptExisting).
 */
async function main(): Promise<void> {
  const paths = resolvePaths();
  fs.mkdirSync(paths.runDir, { recursive: true, mode: 0o700 });
  fs.mkdirSync(paths.logsDir, { recursive: true, mode: 0o700 });
  fs.chmodSync(paths.home, 0o700);
  fs.chmodSync(paths.runDir, 0o700);
  const logStream = fs.createWriteStream(paths.daemonLog, { flags: 'a', mode: 0o600 });
  const log = new Logger({ write: (l) => logStream.write(l) }, 'daemon', process.env.BERTH_DEBUG ? 'debug' : 'info');

  const lock = await acquireDaemonLock(paths.home);
  log.info('daemon starting', { pid: process.pid, home: paths.home });
  fs.writeFileSync(paths.daemonPidFile, `${process.pid}\n`, { mode: 0o600 });

  // The composition root: the backend is chosen here and nowhere else (docs/backends.md).
  const drivers = { vm: new QemuDriver(paths, log.child('vm')), namespace: new NamespaceDriver(paths, log.child('namespace')) };
  const vm = new VmController(paths, new BuilderImageSource(paths.cache, log.child('image')), drivers, log.child('vm'));
  let exiting = false;
  const exit = async (code: number) => {
    if (exiting) return;
    exiting = true;
    log.info('daemon exiting', { code });
    await api.close().catch(() => {});
    fs.rmSync(paths.daemonPidFile, { force: true });
    await lock.release();
    logStream.end(() => process.exit(code));
  };
  const api = new ApiServer(paths.daemonSocket, vm, log.child('api'), () => {
    // After a clean stop nothing is left to own: exit, so an idle berth costs no memory. Unless a
    // new start arrived meanwhile (`berth stop; berth start`): the check and the exit happen in
    // one turn of the event loop, and a request that arrives after it gets no answer, which the
    // CLI retries against a fresh daemon (DaemonClient.stream).
    setTimeout(() => {
      if (vm.idle) void exit(0);
    }, 100);
  });
  await vm.adoptExisting();
  await api.listen();
  log.info('daemon ready', { socket: paths.daemonSocket, state: vm.vmState });

  // SIGTERM/SIGINT stop the daemon but deliberately leave the VM running (it is adopted by the next
  // daemon); `berth stop` is the way to stop the VM.
  process.on('SIGTERM', () => void exit(0));
  process.on('SIGINT', () => void exit(0));
  // A daemon in an unknown state is worse than no daemon: log and exit. QEMU keeps running and
  // the next CLI command starts a fresh daemon that re-attaches to it.
  process.on('uncaughtException', (err) => {
    log.error('uncaught exception; exiting (the VM keeps running)', { err: err.stack ?? String(err) });
    logStream.end(() => process.exit(70));
  });
  process.on('unhandledRejection', (err) => {
    log.error('unhandled rejection', { err: toBerthError(err).message });
  });
}

main().catch((err) => {
  const e = toBerthError(err);
  process.stderr.write(`berth daemon: ${e.message}${e.hint ? `\n${e.hint}` : ''}\n`);
  process.exit(e.code === 'DAEMON_LOCKED' ? 3 : 1);
});
