# Sourced by the benches: CPU time by process name, to say where the two cores went.
# cpu_snapshot prints "name ticks" summed over the processes of each name (threads included, the
# children's time not); cpu_split BEFORE AFTER prints each one's share of the interval.
cpu_snapshot() {
  for p in /proc/[0-9]*; do
    [ -r "$p/stat" ] || continue
    # comm may contain spaces; the fields after the closing parenthesis are fixed.
    awk '{ s = $0; i = index(s, ") "); comm = substr(s, index(s, "(") + 1, i - index(s, "(") - 1);
           split(substr(s, i + 2), f, " "); print comm, f[12] + f[13] }' "$p/stat" 2>/dev/null
  done | awk '{ t[$1] += $2 } END { for (n in t) print n, t[n] }'
}
cpu_split() { # before-file after-file seconds
  awk -v secs="$3" -v hz="$(getconf CLK_TCK)" '
    NR == FNR { before[$1] = $2; next }
    { d = $2 - before[$1]; if (d > 0) used[$1] = d }
    END { for (n in used) printf "  %-22s %5.0f%%\n", n, 100 * used[n] / hz / secs }' "$1" "$2" |
    sort -k2 -nr | head -8
}
