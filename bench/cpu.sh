# Sourced by the benches: CPU time by process, to say where the two cores went.
# cpu_snapshot prints "pid name ticks" per process (threads included, the children's time not);
# cpu_split BEFORE AFTER prints each name's share of the interval, summed over its processes,
# and "(idle)": the cores' idle time.
# Deltas are per pid: a kernel worker renames itself after the work it does, and keyed by name
# a renamed one looked new, its whole lifetime counted (a phantom "kworker 40 %").
cpu_snapshot() {
  for p in /proc/[0-9]*; do
    [ -r "$p/stat" ] || continue
    # comm may contain spaces; the fields after the closing parenthesis are fixed.
    awk '{ s = $0; i = index(s, ") "); comm = substr(s, index(s, "(") + 1, i - index(s, "(") - 1);
           gsub(/ /, "_", comm); split(substr(s, i + 2), f, " "); print $1, comm, f[12] + f[13] }' \
      "$p/stat" 2>/dev/null
  done
  # Idle and I/O wait of all cores, from the first line of /proc/stat.
  awk '$1 == "cpu" { print "idle", "(idle)", $5 + $6; exit }' /proc/stat
}
cpu_split() { # before-file after-file seconds
  awk -v secs="$3" -v hz="$(getconf CLK_TCK)" '
    NR == FNR { before[$1] = $3; next }
    { d = $3 - before[$1]; if (d > 0) used[$2] += d }
    END { for (n in used) printf "  %-22s %5.0f%%\n", n, 100 * used[n] / hz / secs }' "$1" "$2" |
    sort -k2 -nr | head -9
}
