#!/usr/bin/env bash
# Sets up everything the tests need (host packages, npm dependencies, the build, the guest image)
# and runs the whole suite: unit tests, then the end-to-end tests that boot the real VM, then the
# same end-to-end tests on the namespace backend (docs/namespace.md; tests about the VM itself are
# skipped there, with the reason).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bin/berth image build
npm run test:unit
npm run test:e2e
npm run test:e2e:namespace
