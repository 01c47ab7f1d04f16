import type { HostConfig } from './bodies.js';

/**
 * The namespace backend's boundary (docs/namespace.md "The boundary, kept honest"). There the
 * engine runs on the host's kernel, so what a VM would contain reaches the host itself: a
 * privileged container, a capability beyond Docker's default set, a host device, the namespace's
 * pid/ipc/user/cgroup namespaces (which are the host kernel's), an unconfined security profile.
 * Refused unless the user allowed it (`namespace.allowPrivileged`), each with why and the way out.
 */

/** Docker's default capabilities (moby oci/caps/defaults.go): adding one of these changes nothing. */
const DEFAULT_CAPS = new Set(['CHOWN', 'DAC_OVERRIDE', 'FSETID', 'FOWNER', 'MKNOD', 'NET_RAW', 'SETGID', 'SETUID', 'SETFCAP', 'SETPCAP', 'NET_BIND_SERVICE', 'SYS_CHROOT', 'KILL', 'AUDIT_WRITE']);

export type HostKernelRefusal = { field: string; what: string };

/** The first thing in `hc` that would reach the host's kernel, or undefined. */
export function hostKernelRefusal(hc: HostConfig): HostKernelRefusal | undefined {
  if (hc.Privileged === true) return { field: 'HostConfig.Privileged', what: 'a privileged container (--privileged) has every capability and every device of the host' };
  for (const [i, cap] of (hc.CapAdd ?? []).entries()) {
    if (cap === undefined) continue;
    const name = cap.trim().toUpperCase().replace(/^CAP_/, '');
    if (!DEFAULT_CAPS.has(name)) return { field: `HostConfig.CapAdd[${i}]`, what: `the capability ${JSON.stringify(cap)} (--cap-add) acts on the host's kernel` };
  }
  if ((hc.Devices ?? []).some((d) => d !== undefined)) return { field: 'HostConfig.Devices', what: 'a device (--device) would be one of the host\'s' };
  if ((hc.DeviceRequests ?? []).some((d) => d !== undefined)) return { field: 'HostConfig.DeviceRequests', what: 'a device request (--gpus) would hand over one of the host\'s devices' };
  if ((hc.DeviceCgroupRules ?? []).some((r) => r !== undefined && r.trim() !== '')) return { field: 'HostConfig.DeviceCgroupRules', what: 'a device rule (--device-cgroup-rule) would open the host\'s devices' };
  for (const [field, mode] of [['PidMode', hc.PidMode], ['IpcMode', hc.IpcMode], ['UsernsMode', hc.UsernsMode], ['CgroupnsMode', hc.CgroupnsMode]] as const) {
    if (mode !== undefined && mode.trim().toLowerCase() === 'host') return { field: `HostConfig.${field}`, what: `--${field.replace('Mode', '').toLowerCase()}=host shares a namespace of berth's engine, which runs on the host's kernel` };
  }
  for (const [i, opt] of (hc.SecurityOpt ?? []).entries()) {
    if (opt === undefined) continue;
    const o = opt.trim().toLowerCase();
    if (/^(seccomp|apparmor|systempaths)[=:]unconfined$/.test(o) || /^label[=:]disable$/.test(o)) {
      return { field: `HostConfig.SecurityOpt[${i}]`, what: `the security option ${JSON.stringify(opt)} lifts a protection of the host's kernel` };
    }
  }
  return undefined;
}

/** The message the docker CLI prints for a refusal. */
export function hostKernelMessage(r: HostKernelRefusal): string {
  return `berth: ${r.field} cannot be used with the namespace backend: ${r.what}, and there berth's engine runs on this machine's own kernel (no VM in between). Use the VM backend (\`berth start --backend vm\`), or allow it knowingly with \`berth settings set namespace.allowPrivileged true\` and \`berth restart\`.`;
}

/** The engine's own architecture as Docker names it (the namespace backend runs on the host's). */
export function nativeDockerArch(nodeArch: string = process.arch): string {
  const names: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64', ia32: '386' };
  return names[nodeArch] ?? nodeArch;
}

/**
 * The `platform` query of a container create or a build (`linux/arm64`, `linux/amd64,linux/arm64`):
 * in namespaces nothing emulates another architecture (binfmt_misc would be the whole host's), so
 * such a container could only fail later with "exec format error". Refused now, with the way out.
 */
export function platformRefusal(query: readonly [string, string][], native: string = nativeDockerArch()): string | undefined {
  for (const [k, v] of query) {
    if (k !== 'platform' || v.trim() === '') continue;
    for (const p of v.split(',')) {
      const arch = p.trim().toLowerCase().split('/')[1];
      if (arch !== undefined && arch !== native) {
        return `berth: the platform ${JSON.stringify(p.trim())} cannot run with the namespace backend: it runs on this machine's own kernel, which runs ${native} programs only (emulating others would change the whole host). Use the VM backend (\`berth start --backend vm\`), which runs other architectures through its emulators.`;
      }
    }
  }
  return undefined;
}

