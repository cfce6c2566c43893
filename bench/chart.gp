# make bench's chart (bench/run.lua calls it): CPU per call and memory per call truly in
# flight against calls in flight, for the libcurl floor, rrpc and the official SDKs.
#   gnuplot -e "data='build/bench/results.dat'; out='bench/results.svg'; run='...'" bench/chart.gp
# data: one row per level: calls in flight (1: sequential), CPU per call in µs of the
# floor, rrpc, pop-core, iot20180120, then their KB per call in flight (NaN: not measured).
set encoding utf8
set terminal svg size 1100,500 dynamic noenhanced font "sans,12" background "white"
set output out
set datafile missing "NaN"
set key below
set grid
set logscale x
set xtics ("1 (sequential)" 1, "100" 100, "1000" 1000, "8000" 8000)
set xlabel "calls in flight"
set style line 1 lc rgb "#444444" lw 2 pt 7
set style line 2 lc rgb "#d62728" lw 2 pt 5
set style line 3 lc rgb "#1f77b4" lw 2 pt 9
set style line 4 lc rgb "#2ca02c" lw 2 pt 11
set multiplot layout 1,2 title run
set title "CPU per call (user+sys of the client)"
set ylabel "µs per call"
set logscale y
set xrange [0.7:14000]
plot data using 1:2 with linespoints ls 1 title "libcurl floor (bench/floor.c)", \
     '' using 1:3 with linespoints ls 2 title "rrpc", \
     '' using 1:4 with linespoints ls 3 title "@alicloud/pop-core", \
     '' using 1:5 with linespoints ls 4 title "@alicloud/iot20180120"
set title "Memory per call truly in flight (RSS growth / calls held by the emulator)"
set ylabel "KB per call"
unset logscale y
set yrange [0:*]
set xrange [60:14000]
set xtics ("100" 100, "1000" 1000, "8000" 8000)
plot data using 1:6 with linespoints ls 1 title "libcurl floor (bench/floor.c)", \
     '' using 1:7 with linespoints ls 2 title "rrpc", \
     '' using 1:8 with linespoints ls 3 title "@alicloud/pop-core", \
     '' using 1:9 with linespoints ls 4 title "@alicloud/iot20180120"
unset multiplot
