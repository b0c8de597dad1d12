#!/usr/bin/env bash
# Build Ceres' own bundle_adjuster example against Debian's libceres-dev, for benchmarks/bal_ceres.py.
#
#   bash benchmarks/ceres/build.sh [WORKDIR]      # prints the path of the binary and of the BAL problem
#
# Needs: apt-get install libceres-dev (Ceres 2.1 on Debian bookworm, with SuiteSparse, glog, gflags), a
# deb-src line for Debian main (apt-get source ceres-solver fetches the examples and data/problem-16-22106-pre.txt)
# and g++. The example is compiled as shipped except for one added flag, --normalize (default true, the
# stock behaviour): --normalize=false keeps the file's own coordinates, so that Ceres and jaxnls minimise
# the same cost (the stock example rescales the scene to a median distance of 100 first).
set -euo pipefail
work=${1:-/tmp/ceres-bench}
mkdir -p "$work" && cd "$work"
[ -d ceres-solver-2.1.0 ] || { apt-get source --download-only ceres-solver >/dev/null && tar xf ceres-solver_*.orig.tar.xz; }
cd ceres-solver-2.1.0/examples
sed -e 's|^DEFINE_string(input, "", "Input File name");|&\nDEFINE_bool(normalize, true, "Rescale the scene as the stock example does; false keeps the file coordinates.");|' \
    -e 's|^  bal_problem.Normalize();|  if (CERES_GET_FLAG(FLAGS_normalize)) bal_problem.Normalize();|' \
    bundle_adjuster.cc > bundle_adjuster_raw.cc
grep -q FLAGS_normalize bundle_adjuster_raw.cc
g++ -O2 -std=c++17 -DNDEBUG -I. -I/usr/include/eigen3 bundle_adjuster_raw.cc bal_problem.cc \
    -o "$work/bundle_adjuster" -lceres -lglog -lgflags -lpthread
echo "$work/bundle_adjuster"
echo "$work/ceres-solver-2.1.0/data/problem-16-22106-pre.txt"
