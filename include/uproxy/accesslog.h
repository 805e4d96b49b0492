/* accesslog: one line per finished session (time, client, upstream, bytes each way, duration,
 * close reason), as text or JSON, buffered per worker and written through the ring so the
 * loop never blocks on the log. When the log cannot keep up, lines are dropped and counted. */
#ifndef UPROXY_ACCESSLOG_H
#define UPROXY_ACCESSLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "uproxy/addr.h"

/* Each worker buffers up to this much while a write is in flight: at ~150 bytes a line, 400+
 * sessions closing between two completions of a write. */
#define ACCESSLOG_BUF 65536
/* A write to a pipe is atomic up to PIPE_BUF; whole lines up to this size per write keep
 * several workers' lines from interleaving on a shared stdout. */
#define ACCESSLOG_WRITE_MAX 4096

struct accesslog_entry {
	uint64_t end_realtime_ms;    /* wall clock when the session ended */
	const char *listener;	     /* the listener's name; NULL: "-" */
	const struct addr *client;   /* may be NULL: unknown */
	const struct addr *upstream; /* may be NULL: none connected */
	uint64_t bytes_in;	     /* client -> upstream */
	uint64_t bytes_out;	     /* upstream -> client */
	uint64_t duration_ms;
	const char *reason;
	unsigned int truncated; /* SESSION_LOST_* bits: 1 client, 2 upstream */
};

/* "none", "client", "upstream" or "both" for accesslog_entry.truncated. */
const char *accesslog_truncated_name(unsigned int truncated);

struct accesslog {
	int fd;
	bool json;
	char fill[ACCESSLOG_BUF];
	size_t fill_len;
	char flight[ACCESSLOG_BUF];
	size_t flight_len, flight_off;
	bool inflight;
	bool failed; /* a write failed: said once on stderr */
	uint64_t *dropped;
};

/* Formats one line (with '\n') into buf; returns its length, or 0 if it did not fit. */
size_t accesslog_format(char *buf, size_t len, bool json, const struct accesslog_entry *e);

/* Appends a line; false (and the drop counted) when the buffer is full. */
bool accesslog_add(struct accesslog *al, const struct accesslog_entry *e);

/* The next chunk to write, or NULL with nothing to do (a write in flight, nothing buffered). */
const char *accesslog_next(struct accesslog *al, unsigned int *len);

/* A write of the chunk finished with res (bytes or -errno). */
void accesslog_done(struct accesslog *al, int res);

/* At exit: writes what is left with plain write(2). */
void accesslog_drain(struct accesslog *al);

#endif
