#!/usr/bin/env bash
# Builds and runs the consumer project (project/) against an apir source tree used
# as a Meson subproject.
#
#   run_consumer.sh <apir source root> <scratch dir>
#
# The scratch dir is wiped first. Fails if setup, build or the program fails.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 <apir source root> <scratch dir>" >&2
    exit 2
fi
apir_root=$(cd "$1" && pwd)
scratch=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

rm -rf "$scratch"
mkdir -p "$scratch"
cp -R "$here/project" "$scratch/project"
mkdir -p "$scratch/project/subprojects"
ln -s "$apir_root" "$scratch/project/subprojects/apir"

# Always take apir from the subproject, even where an installed apir exists.
meson setup --force-fallback-for=apir "$scratch/build" "$scratch/project"
# Only the consumer and what it links: the subproject's other targets (the tools, the
# simulated device, the virtual node, libggml-apir) are not what a consumer builds, and
# building them all took most of the test's time.
ninja -C "$scratch/build" apir-consumer
"$scratch/build/apir-consumer"
