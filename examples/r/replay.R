# Cache a single-use Arrow stream once and replay it from two readers, from R, through the
# glue in bcr.c (built with R CMD SHLIB against an installed libbatchcorder).
#
#   Rscript replay.R path/to/bcr.so
#
# The stream here comes from the glue's own small producer. With the nanoarrow or arrow R
# packages, pass their stream instead (see docs/c-users.md):
#   upstream <- nanoarrow::as_nanoarrow_array_stream(data.frame(id = 1:10))
#   cache <- bcr_cache_new(upstream)                       # the external pointer itself
#   cache <- bcr_cache_new(nanoarrow::nanoarrow_pointer_addr_chr(upstream))  # or its address

args <- commandArgs(trailingOnly = TRUE)
so <- if (length(args) >= 1) args[[1]] else "bcr.so"
dyn.load(so)

bcr_version <- function() .Call("bcr_version", PACKAGE = "bcr")
bcr_demo_stream <- function(n_batches, rows) {
  .Call("bcr_demo_stream", as.integer(n_batches), as.integer(rows), PACKAGE = "bcr")
}
bcr_stream_addr <- function(stream) .Call("bcr_stream_addr", stream, PACKAGE = "bcr")
bcr_stream_is_released <- function(stream) .Call("bcr_stream_is_released", stream, PACKAGE = "bcr")
bcr_cache_new <- function(stream, max_readers = NA) {
  .Call("bcr_cache_new", stream, as.double(max_readers), PACKAGE = "bcr")
}
bcr_cache_reader <- function(cache, from_start = TRUE) {
  .Call("bcr_cache_reader", cache, from_start, PACKAGE = "bcr")
}
bcr_reader_drain <- function(reader) .Call("bcr_reader_drain", reader, PACKAGE = "bcr")
bcr_cache_stats <- function(cache) .Call("bcr_cache_stats", cache, PACKAGE = "bcr")
bcr_cache_close <- function(cache) invisible(.Call("bcr_cache_close", cache, PACKAGE = "bcr"))

cat("libbatchcorder", bcr_version(), "\n")

n_batches <- 4
rows <- 2500
n <- n_batches * rows
want <- c(batches = n_batches, rows = n, int64_sum = n * (n - 1) / 2,
          double_sum = n * (n - 1) / 4)

# 1. Cache an external pointer to a stream; the cache takes it by move.
upstream <- bcr_demo_stream(n_batches, rows)
cache <- bcr_cache_new(upstream, max_readers = 2)
stopifnot(bcr_stream_is_released(upstream))
readers <- list(bcr_cache_reader(cache), bcr_cache_reader(cache))
for (i in seq_along(readers)) {
  got <- bcr_reader_drain(readers[[i]])
  cat(sprintf("reader %d: %g batches, %g rows, sum(id) = %.0f, sum(value) = %.1f\n",
              i, got[["batches"]], got[["rows"]], got[["int64_sum"]], got[["double_sum"]]))
  stopifnot(identical(got, want))
}
stats <- bcr_cache_stats(cache)
cat(sprintf("cache: %g batches ingested, %g readers created, %g evicted\n",
            stats[["batches_ingested"]], stats[["readers_created"]], stats[["batches_evicted"]]))
stopifnot(stats[["batches_ingested"]] == n_batches, stats[["readers_created"]] == 2)

# 2. The same from an address string, as nanoarrow::nanoarrow_pointer_addr_chr() gives.
upstream2 <- bcr_demo_stream(2, 10)
cache2 <- bcr_cache_new(bcr_stream_addr(upstream2))
early <- bcr_cache_reader(cache2)
stopifnot(bcr_stream_is_released(upstream2))

# 3. Errors carry bc_last_error(): a stream already moved cannot be cached again.
err <- tryCatch(bcr_cache_new(upstream2), error = function(e) conditionMessage(e))
cat("expected error:", err, "\n")
stopifnot(is.character(err), grepl("^bc_cache_new: ", err))

# 4. A reader outlives its cache: drop the cache, collect it, read on.
rm(cache2)
invisible(gc())
got <- bcr_reader_drain(early)
stopifnot(got[["rows"]] == 20, got[["int64_sum"]] == sum(0:19))
cat("reader after its cache was freed:", got[["rows"]], "rows\n")

# 5. After bcr_cache_close(), readers fail cleanly.
cache3 <- bcr_cache_new(bcr_demo_stream(1, 5))
late <- bcr_cache_reader(cache3)
bcr_cache_close(cache3)
err <- tryCatch(bcr_reader_drain(late), error = function(e) conditionMessage(e))
cat("after close:", err, "\n")
stopifnot(is.character(err))

rm(readers, late, early, cache, cache3, upstream, upstream2)
invisible(gc())
cat("OK: one upstream pass, two full replays from R\n")
