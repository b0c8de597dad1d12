#!/usr/bin/env bash
# Build Ceres' own NIST StRD example (examples/nist.cc) against Debian's libceres-dev, as a peer for the NIST
# rows of benchmarks/README.md.
#
#   bash benchmarks/ceres/build_nist.sh [WORKDIR]    # prints the path of the binary and of the NIST data folder
#   WORKDIR/nist --nist_data_dir=WORKDIR/ceres-solver-2.1.0/data/nist/ --num_iterations=1000
#
# Needs what build.sh needs (libceres-dev, a deb-src line for Debian main, g++). The example is compiled as
# shipped (Levenberg-Marquardt, DENSE_QR, Jacobi scaling, function / gradient / parameter tolerances = machine
# epsilon; it counts LRE > 4 as a success) except for two added lines after each Ceres solve and in its options:
# the iteration count and termination type are printed, and CERES_LOG=1 in the environment turns on Ceres' own
# per-iteration log.
set -euo pipefail
work=${1:-/tmp/ceres-bench}
mkdir -p "$work" && cd "$work"
[ -d ceres-solver-2.1.0 ] || { apt-get source --download-only ceres-solver >/dev/null && tar xf ceres-solver_*.orig.tar.xz; }
cd ceres-solver-2.1.0/examples
python3 - <<'EOF'
source = open("nist.cc").read()
solved = "      initial_cost = summary.initial_cost;\n      final_cost = summary.final_cost;\n    } else {"
options = "  options->parameter_tolerance = std::numeric_limits<double>::epsilon();\n}"
assert source.count(solved) == 1 and source.count(options) == 1, "nist.cc is not the Ceres 2.1 example"
source = source.replace(solved, solved.replace(
    "    } else {",
    '      printf("iterations: %d successful: %d termination: %s\\n", (int)summary.iterations.size() - 1,\n'
    "             summary.num_successful_steps, ceres::TerminationTypeToString(summary.termination_type));\n"
    "    } else {"))
source = source.replace(options, options.replace(
    "\n}", '\n  options->minimizer_progress_to_stdout = getenv("CERES_LOG") != nullptr;\n}'))
open("nist_counted.cc", "w").write(source)
EOF
g++ -O2 -std=c++17 -DNDEBUG -I. -I/usr/include/eigen3 nist_counted.cc -o "$work/nist" -lceres -lglog -lgflags -lpthread
echo "$work/nist"
echo "$work/ceres-solver-2.1.0/data/nist/"
