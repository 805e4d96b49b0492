# Chart of the main ratios for bench/bench.py, which calls:
#   gnuplot -e "datafile='latest.dat'; outfile='latest.png'; ntargets=4; nrows=4; charttitle='...'" chart.gp
# datafile: a header "metric TARGET..." then one row per ratio, one column per target (NaN = none).
set terminal pngcairo size 1100,560 enhanced font "DejaVu Sans,10"
set output outfile
set title charttitle noenhanced
set datafile missing "NaN"
set key autotitle columnheader outside bottom center horizontal noenhanced
set style fill solid 0.85 border -1
set grid ytics
set yrange [0:*]
set offsets 0, 0, graph 0.08, 0
set xrange [-0.6:nrows - 0.4]
set xtics scale 0 noenhanced
set ylabel "ratio (req/s: higher is better; CPU/req: lower is better)"
set arrow from graph 0, first 1 to graph 1, first 1 nohead dashtype 2 linecolor rgb "#444444"

w = 0.8 / ntargets
set boxwidth w absolute
# Bar of column i (targets start at column 2) in row r: centred on the row, side by side.
x(i) = column(0) + (i - 2 - (ntargets - 1) / 2.0) * w

plot for [i=2:ntargets+1] datafile using (x(i)):i with boxes, \
     for [i=2:ntargets+1] datafile using (x(i)):i:(sprintf("%.2f", column(i))) \
         with labels offset 0,0.7 font ",8" notitle, \
     datafile using 0:(0):xtic(1) with points pointtype 7 pointsize 0 notitle
