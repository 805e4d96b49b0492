/* accesslog: formats session lines and hands the worker whole-line chunks to write through
 * its ring, double-buffered: one buffer fills while the other is being written. Never blocks
 * and never grows; a full buffer drops the line and counts it. */
#include "uproxy/accesslog.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "uproxy/log.h"

const char *accesslog_truncated_name(unsigned int truncated)
{
	static const char *const names[] = { "none", "client", "upstream", "both" };

	return names[truncated & 3];
}

size_t accesslog_format(char *buf, size_t len, bool json, const struct accesslog_entry *e)
{
	char when[40], client[ADDR_STRLEN] = "-", up[ADDR_STRLEN] = "-";
	const char *lname = e->listener != NULL ? e->listener : "-";
	time_t secs = (time_t)(e->end_realtime_ms / 1000);
	struct tm tm;
	int n;

	gmtime_r(&secs, &tm);
	n = (int)strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(when + n, sizeof(when) - (size_t)n, ".%03uZ",
		 (unsigned int)(e->end_realtime_ms % 1000));
	if (e->client != NULL)
		addr_format(e->client, client, sizeof(client));
	if (e->upstream != NULL)
		addr_format(e->upstream, up, sizeof(up));
	if (json)
		n = snprintf(buf, len,
			     "{\"time\":\"%s\",\"listener\":\"%s\",\"client\":\"%s\","
			     "\"upstream\":\"%s\","
			     "\"bytes_client_to_upstream\":%llu,\"bytes_upstream_to_client\":%llu,"
			     "\"duration_ms\":%llu,\"reason\":\"%s\",\"truncated\":\"%s\"}\n",
			     when, lname, client, up, (unsigned long long)e->bytes_in,
			     (unsigned long long)e->bytes_out, (unsigned long long)e->duration_ms,
			     e->reason, accesslog_truncated_name(e->truncated));
	else
		n = snprintf(buf, len,
			     "%s listener=%s client=%s upstream=%s bytes_in=%llu bytes_out=%llu "
			     "duration_ms=%llu reason=%s truncated=%s\n",
			     when, lname, client, up, (unsigned long long)e->bytes_in,
			     (unsigned long long)e->bytes_out, (unsigned long long)e->duration_ms,
			     e->reason, accesslog_truncated_name(e->truncated));
	if (n < 0 || (size_t)n >= len)
		return 0;
	return (size_t)n;
}

bool accesslog_add(struct accesslog *al, const struct accesslog_entry *e)
{
	size_t n = accesslog_format(al->fill + al->fill_len, sizeof(al->fill) - al->fill_len,
				    al->json, e);

	if (n == 0) {
		(*al->dropped)++;
		return false;
	}
	al->fill_len += n;
	return true;
}

const char *accesslog_next(struct accesslog *al, unsigned int *len)
{
	size_t n;

	if (!al->inflight) {
		if (al->fill_len == 0)
			return NULL;
		memcpy(al->flight, al->fill, al->fill_len);
		al->flight_len = al->fill_len;
		al->flight_off = 0;
		al->fill_len = 0;
		al->inflight = true;
	} else if (al->flight_off >= al->flight_len) {
		return NULL;
	}
	/* Whole lines, at most ACCESSLOG_WRITE_MAX bytes (a single longer line goes alone). */
	n = al->flight_len - al->flight_off;
	if (n > ACCESSLOG_WRITE_MAX) {
		const char *start = al->flight + al->flight_off;
		const char *nl = memrchr(start, '\n', ACCESSLOG_WRITE_MAX);

		if (nl == NULL) /* one line longer than the limit: it goes alone */
			nl = memchr(start + ACCESSLOG_WRITE_MAX, '\n', n - ACCESSLOG_WRITE_MAX);
		n = nl != NULL ? (size_t)(nl - start) + 1 : n;
	}
	*len = (unsigned int)n;
	return al->flight + al->flight_off;
}

void accesslog_done(struct accesslog *al, int res)
{
	if (res < 0) {
		if (!al->failed)
			log_error("access log write failed: %s; dropping lines until it works",
				  strerror(-res));
		al->failed = true;
		for (size_t i = al->flight_off; i < al->flight_len; i++)
			*al->dropped += al->flight[i] == '\n';
		al->inflight = false;
		return;
	}
	al->failed = false;
	al->flight_off += (size_t)res;
	if (al->flight_off >= al->flight_len)
		al->inflight = false;
}

void accesslog_drain(struct accesslog *al)
{
	const char *p;
	unsigned int n;

	/* Whatever the ring did not get to: the buffer in flight was written or failed, since
	 * the loop waited for it, so only unsent bytes remain. */
	while ((p = accesslog_next(al, &n)) != NULL) {
		ssize_t w = write(al->fd, p, n);

		accesslog_done(al, w < 0 ? -errno : (int)w);
		if (w <= 0)
			break;
	}
}
