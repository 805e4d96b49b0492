/* stats: names and renders the per-worker counters. Counters are plain integers bumped by the
 * owning worker; this file only reads them. */
#include "uproxy/stats.h"

#include <inttypes.h>

#include "uproxy/log.h"

static const char *const reason_names[CLOSE__COUNT] = {
	[CLOSE_NORMAL] = "normal",
	[CLOSE_CLIENT_RESET] = "client_reset",
	[CLOSE_UPSTREAM_RESET] = "upstream_reset",
	[CLOSE_CONNECT_FAILED] = "connect_failed",
	[CLOSE_SHUTDOWN] = "shutdown",
	[CLOSE_RESOURCE] = "resource",
	[CLOSE_TIMEOUT] = "timeout",
};

const char *close_reason_name(enum close_reason r)
{
	if ((unsigned)r >= CLOSE__COUNT)
		return "?";
	return reason_names[r];
}

void stats_log_summary(const struct worker_stats *st, const struct loop_stats *ls, int worker)
{
	log_info("worker %d: accepted=%" PRIu64 " closed normal=%" PRIu64 " client_reset=%" PRIu64
		 " upstream_reset=%" PRIu64 " connect_failed=%" PRIu64 " shutdown=%" PRIu64
		 " resource=%" PRIu64 " timeout=%" PRIu64 " bytes c2u=%" PRIu64 " u2c=%" PRIu64
		 " connect_errors=%" PRIu64 " accept_errors=%" PRIu64 " accept_backoffs=%" PRIu64 " accept_overflow=%" PRIu64
		 " buf_exhausted=%" PRIu64 " backpressure=%" PRIu64 " stale_cqes=%" PRIu64
		 " enters=%" PRIu64 " sqes=%" PRIu64 " cqes=%" PRIu64 " cq_overflow=%" PRIu64,
		 worker, st->accepted, st->closed[CLOSE_NORMAL], st->closed[CLOSE_CLIENT_RESET],
		 st->closed[CLOSE_UPSTREAM_RESET], st->closed[CLOSE_CONNECT_FAILED],
		 st->closed[CLOSE_SHUTDOWN], st->closed[CLOSE_RESOURCE], st->closed[CLOSE_TIMEOUT], st->bytes[0], st->bytes[1],
		 st->connect_errors, st->accept_errors, st->accept_backoffs, st->accept_overflow, st->buf_exhausted,
		 st->backpressure, st->stale_cqes, ls->enters, ls->submitted, ls->cqes,
		 ls->cq_overflow);
}
