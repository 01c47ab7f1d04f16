import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BerthError } from '../util/errors.js';
import { explainResolveFailure, parsePrintUrisLine } from './apt.js';

test('print-uris lines give name, version (epoch decoded), arch, size, url', () => {
  const p = parsePrintUrisLine("'http://deb.debian.org/debian/pool/main/u/util-linux/bsdutils_2.38.1-5%2bdeb12u3_amd64.deb' bsdutils_1%3a2.38.1-5+deb12u3_amd64.deb 93472 SHA256:0123abcd");
  assert.deepEqual(p, {
    name: 'bsdutils',
    version: '1:2.38.1-5+deb12u3',
    arch: 'amd64',
    filename: 'bsdutils_1%3a2.38.1-5+deb12u3_amd64.deb',
    size: 93472,
    url: 'http://deb.debian.org/debian/pool/main/u/util-linux/bsdutils_2.38.1-5%2bdeb12u3_amd64.deb',
  });
  const q = parsePrintUrisLine("'http://deb.debian.org/debian/pool/main/n/nodejs/nodejs_18.20.4%2bdfsg-1%7edeb12u3_amd64.deb' nodejs_18.20.4+dfsg-1~deb12u3_amd64.deb 321000 MD5Sum:8e7e741807b1e1939df8f58323affdcb");
  assert.equal(q?.version, '18.20.4+dfsg-1~deb12u3');
  assert.equal(parsePrintUrisLine("'http://x/libaudit-common_3.0.9-1_all.deb' libaudit-common_1%3a3.0.9-1_all.deb 10448 MD5Sum:00")?.arch, 'all');
  // without a hash (apt omits it when the index has none)
  assert.equal(parsePrintUrisLine("'file:/srv/repo/tini_0.19.0-1_amd64.deb' tini_0.19.0-1_amd64.deb 1000")?.name, 'tini');
});

test('apt chatter is not a package', () => {
  for (const line of ['Reading package lists...', 'Need to get 3114 kB of archives.', '', "'http://x/y' notadeb.txt 12 MD5Sum:00", "'http://x/a_1_amd64.deb' a_1_amd64.deb many MD5Sum:00"]) {
    assert.equal(parsePrintUrisLine(line), undefined, line);
  }
});

function aptFailure(stderr: string, stdout = ''): BerthError {
  return new BerthError('IMAGE_RESOLVE_FAILED', 'apt-get exited with status 100', { details: { stderrTail: stderr, stdoutTail: stdout } });
}

test('resolution failures name the package and say what to do', () => {
  const cases: Array<[BerthError, string, RegExp]> = [
    [aptFailure('E: Unable to locate package nosuchpkg'), 'nosuchpkg', /nosuchpkg is not in the package indices/],
    [aptFailure("E: Version '9.9' for 'tini' was not found"), 'tini=9.9', /version 9\.9 of tini/],
    [aptFailure("E: Package 'docker.io' has no installation candidate"), 'docker.io', /docker\.io has no installable version/],
    [aptFailure('E: Unable to correct problems, you have held broken packages.', ' docker.io : Depends: containerd (>= 1.6) but it is not installable'), 'docker.io', /docker\.io depends on containerd \(>= 1\.6\) but it is not installable/],
  ];
  for (const [cause, pkg, re] of cases) {
    const err = explainResolveFailure(cause, ['docker.io', 'tini']);
    assert.equal(err.code, 'IMAGE_RESOLVE_FAILED');
    assert.equal(err.details?.package, pkg);
    assert.match(err.message, re);
    assert.match(err.hint ?? '', /apt-get update/);
    assert.match(err.hint ?? '', /manifest/);
    assert.ok(String(err.details?.stderrTail).length > 0, 'stderr tail kept');
  }
});
