#!/usr/bin/env bash
# Side by side: the benchmarks of this checkout run against jaxnls at an earlier revision and at the working
# tree, alternating part by part so that the machine's drift weighs on both alike.
#
#   bash benchmarks/before_after.sh REVISION [OUTDIR]
#
# REVISION is checked out into a temporary git worktree; both runs use THIS checkout's benchmark scripts
# (same problems, same calls) with PYTHONPATH pointing at the jaxnls package to measure. Logs go to OUTDIR
# (default benchmarks/results/before_after), one file per part and side.
set -euo pipefail
revision=${1:?usage: bash benchmarks/before_after.sh REVISION [OUTDIR]}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
out=${2:-$here/results/before_after}
mkdir -p "$out"
before=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$before" >/dev/null 2>&1 || true' EXIT
git -C "$root" worktree add --detach "$before" "$revision" >/dev/null
cd "$here"
run() {  # run NAME SIDE COMMAND...
  local name=$1 side=$2; shift 2
  local package=$root; [ "$side" = before ] && package=$before
  echo "=== $name $side $(date +%T)"
  PYTHONPATH=$package "$@" > "$out/$name.$side.log" 2>&1 || echo "    (exit $?)"
}
for part in curvefit nist adjoints; do
  for side in before after; do run "$part" "$side" python run.py --only "$part" --repeats 5; done
done
for side in before after; do
  run w10000 "$side" python posegraph.py --file w10000.graph --repeats 3 \
    --only "gtsam LM (default params),jaxnls Dogleg + SparseDirect,jaxnls GaussNewton + SparseDirect"
  run sphere2500 "$side" python posegraph.py --file sphere2500.txt --repeats 3 \
    --only "gtsam LM (default params),jaxnls Dogleg + SparseDirect,jaxnls GaussNewton + SparseDirect"
done
echo "=== done $(date +%T); logs in $out"
