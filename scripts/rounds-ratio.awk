# The median [min-max] over 3 rounds of a large case's figure over a small one's, from one line
# "l1 l2 l3 s1 s2 s3" (scripts/history-bench.sh and scripts/list-bench.sh print it).
{
  split($0, v, " ")
  for (i = 1; i <= 3; i++) r[i] = v[i] / v[i + 3]
  for (i = 1; i <= 3; i++) for (j = i + 1; j <= 3; j++) if (r[j] < r[i]) { x = r[i]; r[i] = r[j]; r[j] = x }
  printf "%.2f [%.2f-%.2f]", r[2], r[1], r[3]
}
