#!/usr/bin/env bash
# Sets up everything the tests need (host packages, npm dependencies, the build, the guest image)
# and runs the whole suite: unit tests, then the end-to-end tests that boot the real VM.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bin/berth image build
npm run test:unit
npm run test:e2e
