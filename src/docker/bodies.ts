import { list, map, RAW, raw, str, struct, bool, DecodeError, type Codec, type JsonValue, type Struct } from './go-json.js';

/**
 * The request bodies that can name a host path, as dockerd's Go types (moby v20.10.24 and
 * v26.1.5; docs/docker-proxy.md "What a body may name"). Only the fields a decision depends on
 * are modelled; the rest of each struct is kept raw and passed on. The `others` lists name the
 * struct's remaining Go fields, so that a key matching one of them exactly is never taken for a
 * modelled field by case folding (Go prefers the exact match).
 */

// ---- api/types/mount ----

export type DriverConfig = Struct<{ Name: string; Options: Map<string, string | undefined> }>;
export type VolumeOptions = Struct<{ DriverConfig: DriverConfig }>;
export type Mount = Struct<{ Type: string; Source: string; VolumeOptions: VolumeOptions }>;

const driverConfig: Codec<DriverConfig> = struct({ Name: str, Options: map(str) });
const volumeOptions: Codec<VolumeOptions> = struct({ DriverConfig: driverConfig }, { others: ['NoCopy', 'Labels', 'Subpath'] });
export const mountCodec: Codec<Mount> = struct(
  { Type: str, Source: str, VolumeOptions: volumeOptions },
  { others: ['Target', 'ReadOnly', 'Consistency', 'BindOptions', 'TmpfsOptions', 'ClusterOptions'] },
);

// ---- api/types/container ----

export type DeviceMapping = Struct<{ PathOnHost: string }>;
const deviceMapping: Codec<DeviceMapping> = struct({ PathOnHost: str }, { others: ['PathInContainer', 'CgroupPermissions'] });

/** HostConfig's own fields and those of the Resources struct it embeds (both versions). */
const HOST_CONFIG_FIELDS = [
  'Binds', 'ContainerIDFile', 'LogConfig', 'NetworkMode', 'PortBindings', 'RestartPolicy', 'AutoRemove', 'VolumeDriver',
  'VolumesFrom', 'ConsoleSize', 'Annotations', 'CapAdd', 'CapDrop', 'CgroupnsMode', 'Dns', 'DnsOptions', 'DnsSearch',
  'ExtraHosts', 'GroupAdd', 'IpcMode', 'Cgroup', 'Links', 'OomScoreAdj', 'PidMode', 'Privileged', 'PublishAllPorts',
  'ReadonlyRootfs', 'SecurityOpt', 'StorageOpt', 'Tmpfs', 'UTSMode', 'UsernsMode', 'ShmSize', 'Sysctls', 'Runtime',
  'Isolation', 'Mounts', 'MaskedPaths', 'ReadonlyPaths', 'Init',
  'CpuShares', 'Memory', 'NanoCpus', 'CgroupParent', 'BlkioWeight', 'BlkioWeightDevice', 'BlkioDeviceReadBps',
  'BlkioDeviceWriteBps', 'BlkioDeviceReadIOps', 'BlkioDeviceWriteIOps', 'CpuPeriod', 'CpuQuota', 'CpuRealtimePeriod',
  'CpuRealtimeRuntime', 'CpusetCpus', 'CpusetMems', 'Devices', 'DeviceCgroupRules', 'DeviceRequests', 'KernelMemory',
  'KernelMemoryTCP', 'MemoryReservation', 'MemorySwap', 'MemorySwappiness', 'OomKillDisable', 'PidsLimit', 'Ulimits',
  'CpuCount', 'CpuPercent', 'IOMaximumIOps', 'IOMaximumBandwidth',
] as const;

const CONFIG_FIELDS = [
  'Hostname', 'Domainname', 'User', 'AttachStdin', 'AttachStdout', 'AttachStderr', 'ExposedPorts', 'Tty', 'OpenStdin',
  'StdinOnce', 'Env', 'Cmd', 'Healthcheck', 'ArgsEscaped', 'Image', 'Volumes', 'WorkingDir', 'Entrypoint',
  'NetworkDisabled', 'MacAddress', 'OnBuild', 'Labels', 'StopSignal', 'StopTimeout', 'Shell',
];

/**
 * strslice.StrSlice (CapAdd, CapDrop): dockerd takes a list of strings or one string. Decoded as a
 * list either way, and sent on as a list, which dockerd reads the same.
 */
const strSlice: Codec<(string | undefined)[]> = {
  what: 'a string or a list of strings',
  decode(v, at) {
    if (v.t === 'string') return [v.v];
    if (v.t !== 'array') throw new DecodeError(at, `expected a string or a list of strings, got ${v.t === 'bool' ? 'boolean' : v.t}`);
    return list(str).decode(v, at);
  },
  encode: (items) => list(str).encode(items),
};

/**
 * The fields a decision depends on: paths (Binds, Mounts, Devices) everywhere, and with the
 * namespace backend what reaches the host's kernel (docs/namespace.md "The boundary").
 */
const MODELLED_HOST_CONFIG = ['Binds', 'Mounts', 'Devices', 'Privileged', 'CapAdd', 'DeviceCgroupRules', 'DeviceRequests', 'PidMode', 'IpcMode', 'UsernsMode', 'CgroupnsMode', 'SecurityOpt'];

export type HostConfig = Struct<{
  Binds: (string | undefined)[];
  Mounts: (Mount | undefined)[];
  Devices: (DeviceMapping | undefined)[];
  Privileged: boolean;
  CapAdd: (string | undefined)[];
  DeviceCgroupRules: (string | undefined)[];
  DeviceRequests: (JsonValue | undefined)[];
  PidMode: string;
  IpcMode: string;
  UsernsMode: string;
  CgroupnsMode: string;
  SecurityOpt: (string | undefined)[];
}>;
export const hostConfigCodec: Codec<HostConfig> = struct(
  {
    Binds: list(str),
    Mounts: list(mountCodec),
    Devices: list(deviceMapping),
    Privileged: bool,
    CapAdd: strSlice,
    DeviceCgroupRules: list(str),
    DeviceRequests: list(raw),
    PidMode: str,
    IpcMode: str,
    UsernsMode: str,
    CgroupnsMode: str,
    SecurityOpt: list(str),
  },
  { others: HOST_CONFIG_FIELDS.filter((f) => !MODELLED_HOST_CONFIG.includes(f)) },
);

/**
 * POST /containers/create: runconfig.ContainerConfigWrapper, which embeds *container.Config and,
 * deprecated, *container.HostConfig: a HostConfig field at the top level is read by dockerd
 * (`{"Binds": [...]}` binds), so the proxy refuses every one of them.
 */
export type ContainerCreate = Struct<{ HostConfig: HostConfig }>;
export const containerCreateCodec: Codec<ContainerCreate> = struct(
  { HostConfig: hostConfigCodec },
  {
    others: [...CONFIG_FIELDS, 'Cpuset', 'NetworkingConfig'],
    deny: HOST_CONFIG_FIELDS,
    denyReason: 'a HostConfig field at the top level of the request (deprecated; dockerd still reads it): put it inside "HostConfig"',
  },
);

// ---- volumes ----

/** POST /volumes/create: volume.CreateOptions (VolumeCreateBody in 20.10). */
export type VolumeCreate = Struct<{ Driver: string; DriverOpts: Map<string, string | undefined> }>;
export const volumeCreateCodec: Codec<VolumeCreate> = struct({ Driver: str, DriverOpts: map(str) }, { others: ['Name', 'Labels', 'ClusterVolumeSpec'] });

// ---- plugins ----

/** types.PluginPrivilege (plugin pull and upgrade bodies are a list of them). */
export type Privilege = Struct<{ Name: string; Value: (string | undefined)[] }>;
export const privilegeCodec: Codec<Privilege> = struct({ Name: str, Value: list(str) }, { others: ['Description'] });
export const privilegesCodec = list(privilegeCodec);

/** POST /plugins/{name}/set: a list of "name[.field]=value" strings. */
export const pluginSetCodec = list(str);

/** The plugin's config.json in a `docker plugin create` archive (types.PluginConfig), as far as it names paths. */
export type PluginMount = Struct<{ Name: string; Source: string; Type: string }>;
export type PluginDevice = Struct<{ Name: string; Path: string }>;
export type PluginConfig = Struct<{
  Mounts: (PluginMount | undefined)[];
  Linux: Struct<{ AllowAllDevices: boolean; Devices: (PluginDevice | undefined)[] }>;
}>;
export const pluginConfigCodec: Codec<PluginConfig> = struct(
  {
    Mounts: list(struct({ Name: str, Source: str, Type: str }, { others: ['Description', 'Destination', 'Options', 'Settable'] })),
    Linux: struct({ AllowAllDevices: bool, Devices: list(struct({ Name: str, Path: str }, { others: ['Description', 'Settable'] })) }, { others: ['Capabilities'] }),
  },
  {
    others: ['Args', 'Description', 'DockerVersion', 'Documentation', 'Entrypoint', 'Env', 'Interface', 'IpcHost', 'Network', 'PidHost', 'PropagatedMount', 'User', 'WorkDir', 'rootfs'],
  },
);

/** What the plugin will run with, from dockerd's answer to GET /plugins/{name}/json (guest data, checked shape by shape). */
export interface PluginState {
  /** Mount and device names of the config: the names `set` can change. */
  mounts: string[];
  devices: string[];
  /** The effective mount sources and device paths (Settings). */
  mountSources: string[];
  devicePaths: string[];
  allowAllDevices: boolean;
}

export function pluginState(info: unknown): PluginState {
  const o = (v: unknown): Record<string, unknown> => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : {});
  const arr = (v: unknown): Record<string, unknown>[] => (Array.isArray(v) ? v.map(o) : []);
  const strs = (xs: Record<string, unknown>[], key: string) => xs.map((x) => x[key]).filter((x): x is string => typeof x === 'string' && x !== '');
  const config = o(o(info).Config);
  const settings = o(o(info).Settings);
  return {
    mounts: strs(arr(config.Mounts), 'Name'),
    devices: strs(arr(o(config.Linux).Devices), 'Name'),
    mountSources: strs(arr(settings.Mounts), 'Source'),
    devicePaths: strs(arr(settings.Devices), 'Path'),
    allowAllDevices: o(config.Linux).AllowAllDevices === true,
  };
}

// ---- swarm services ----

/** swarm/runtime.PluginSpec and PluginPrivilege (protobuf-generated: lower-case JSON names). */
export type RuntimePrivilege = Struct<{ name: string; value: (string | undefined)[] }>;
export type PluginSpec = Struct<{ privileges: (RuntimePrivilege | undefined)[] }>;
const pluginSpecCodec: Codec<PluginSpec> = struct(
  { privileges: list(struct({ name: str, value: list(str) }, { others: ['description'] })) },
  { others: ['name', 'remote', 'disabled', 'env'] },
);

export type ServiceSpec = Struct<{ TaskTemplate: Struct<{ ContainerSpec: Struct<{ Mounts: (Mount | undefined)[] }>; PluginSpec: PluginSpec }> }>;
export const serviceSpecCodec: Codec<ServiceSpec> = struct(
  {
    TaskTemplate: struct(
      {
        ContainerSpec: struct(
          { Mounts: list(mountCodec) },
          {
            others: [
              'Image', 'Labels', 'Command', 'Args', 'Hostname', 'Env', 'Dir', 'User', 'Groups', 'Privileges', 'Init', 'StopSignal',
              'TTY', 'OpenStdin', 'ReadOnly', 'StopGracePeriod', 'Healthcheck', 'Hosts', 'DNSConfig', 'Secrets', 'Configs',
              'Isolation', 'Sysctls', 'CapabilityAdd', 'CapabilityDrop', 'Ulimits',
            ],
          },
        ),
        PluginSpec: pluginSpecCodec,
      },
      { others: ['NetworkAttachmentSpec', 'Resources', 'RestartPolicy', 'Placement', 'Networks', 'LogDriver', 'ForceUpdate', 'Runtime'] },
    ),
  },
  { others: ['Name', 'Labels', 'Mode', 'UpdateConfig', 'RollbackConfig', 'Networks', 'EndpointSpec'] },
);

export { RAW };
