# ratio.awk: Sluice ("custom") against Postfix from one results CSV of the
# shared peer harness (../shared/bench/run.sh): per scenario, the median
# end-to-end msgs/s and relay CPU µs per message of each, and their ratios.
# Usage: awk -F, -f examples/bench/ratio.awk results.csv
function med(s,   n, a, i, j, t) {
  n = split(s, a, " ")
  for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
  if (n == 0) return 0
  if (n % 2) return a[(n + 1) / 2] + 0
  return (a[n / 2] + a[n / 2 + 1]) / 2
}
FNR == 1 { next }
$6 == "ok" {
  sc = $2 SUBSEP $3
  if (!(sc in seen)) { seen[sc] = 1; order[++ns] = sc }
  e2e[$1, sc] = e2e[$1, sc] " " $11
  cpu[$1, sc] = cpu[$1, sc] " " (1e6 * $12 / $4)
}
END {
  print "| scenario | Sluice msgs/s | Postfix msgs/s | **ratio** | Sluice CPU µs/msg | Postfix CPU µs/msg | CPU ratio |"
  print "|---|---|---|---|---|---|---|"
  for (k = 1; k <= ns; k++) {
    sc = order[k]; split(sc, f, SUBSEP)
    size = (f[1] >= 1024) ? sprintf("%d KB", f[1] / 1024) : f[1] " B"
    sess = f[2]; reuse = sub(/d$/, "", sess)
    name = size " × " sess (reuse ? " (reuse conn)" : " (conn per msg)")
    if (!(("custom", sc) in e2e) || !(("postfix", sc) in e2e)) { print "| " name " | (missing runs) | | | | | |"; continue }
    se = med(e2e["custom", sc]); pe = med(e2e["postfix", sc])
    sc_ = med(cpu["custom", sc]); pc = med(cpu["postfix", sc])
    printf "| %s | %.0f | %.0f | **%.1f×** | %.0f | %.0f | %.1f× less |\n", name, se, pe, (pe > 0 ? se / pe : 0), sc_, pc, (sc_ > 0 ? pc / sc_ : 0)
  }
}
