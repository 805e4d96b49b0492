/* httpstats: a tiny HTTP/1.x responder for GET /metrics on worker 0's loop. Every read and
 * write is a loop request with a linked timeout; the answer is rendered from all workers'
 * snapshots. Must never block, never serve more than HTTPSTATS_MAX_CONNS scrapes, never touch
 * sessions, and knows nothing of the worker: what it needs is in struct httpstats. */
#include "uproxy/httpstats.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "uproxy/config.h"
#include "uproxy/loop.h"
#include "uproxy/stats.h"

enum { HS_ACCEPT = 0, HS_RECV, HS_SEND, HS_TIMEOUT, HS_CLOSE };

static uint64_t htag(uint32_t idx, unsigned int stage)
{
	return tag_make(idx, 0, stage, OP_STATS);
}

int httpstats_route(const char *req, size_t len)
{
	const char *end = memmem(req, len, "\r\n\r\n", 4);
	const char *sp, *path, *pend;

	if (end == NULL)
		end = memmem(req, len, "\n\n", 2);
	if (end == NULL)
		return len >= HTTPSTATS_REQ_MAX ? 400 : 0;
	sp = memchr(req, ' ', (size_t)(end - req));
	if (sp == NULL)
		return 400;
	path = sp + 1;
	pend = memchr(path, ' ', (size_t)(end - path));
	if (pend == NULL || end - (pend + 1) < 7 || memcmp(pend + 1, "HTTP/1.", 7) != 0)
		return 400;
	if ((size_t)(sp - req) != 3 || memcmp(req, "GET", 3) != 0)
		return 405;
	if ((pend - path == 8 && memcmp(path, "/metrics", 8) == 0) ||
	    (pend - path > 8 && memcmp(path, "/metrics?", 9) == 0))
		return 200;
	return 404;
}

static void accept_arm(struct httpstats *hs, int i)
{
	loop_accept_multishot(hs->loop, hs->fds[i], htag((uint32_t)i, HS_ACCEPT));
	hs->armed[i] = true;
}

void httpstats_start(struct httpstats *hs)
{
	for (int i = 0; i < hs->nfds; i++)
		accept_arm(hs, i);
}

void httpstats_stop(struct httpstats *hs)
{
	hs->stopping = true;
	for (int i = 0; i < hs->nfds; i++) {
		if (hs->fds[i] < 0)
			continue;
		/* Both CQEs carry the ignored HS_TIMEOUT stage. */
		loop_cancel_fd_then_close(hs->loop, hs->fds[i], htag(0, HS_TIMEOUT),
					  htag(0, HS_TIMEOUT));
		hs->fds[i] = -1;
	}
}

static void conn_close(struct httpstats *hs, uint32_t idx)
{
	struct httpstats_conn *c = &hs->conns[idx];

	loop_close(hs->loop, c->fd, htag(idx, HS_CLOSE));
	c->fd = -1;
}

static void conn_recv(struct httpstats *hs, uint32_t idx)
{
	struct httpstats_conn *c = &hs->conns[idx];

	loop_recv_buf_timeout(hs->loop, c->fd, c->req + c->len, HTTPSTATS_REQ_MAX - c->len,
			      HTTPSTATS_TIMEOUT_MS, htag(idx, HS_RECV), htag(idx, HS_TIMEOUT));
}

static void conn_send(struct httpstats *hs, uint32_t idx)
{
	struct httpstats_conn *c = &hs->conns[idx];

	loop_send_timeout(hs->loop, c->fd, c->resp + c->sent, (unsigned int)(c->resp_len - c->sent),
			  HTTPSTATS_TIMEOUT_MS, htag(idx, HS_SEND), htag(idx, HS_TIMEOUT));
}

static char *render_all(struct httpstats *hs, size_t *body_len)
{
	static struct stats_snapshot snaps[CONFIG_MAX_WORKERS];
	size_t need = 16384;
	char *body = NULL;

	for (int i = 0; i < hs->nsnaps; i++)
		stats_read(hs->snaps[i], &snaps[i]);
	for (int tries = 0; tries < 3; tries++) {
		char *nb = realloc(body, need + 1);

		if (nb == NULL)
			break;
		body = nb;
		*body_len = stats_render(body, need + 1, snaps, hs->nsnaps);
		if (*body_len <= need)
			return body;
		need = *body_len;
	}
	free(body);
	return NULL;
}

static void respond(struct httpstats *hs, uint32_t idx, int code)
{
	static const char *const reasons[] = { [200] = "OK",
					       [400] = "Bad Request",
					       [404] = "Not Found",
					       [405] = "Method Not Allowed",
					       [500] = "Internal Server Error" };
	struct httpstats_conn *c = &hs->conns[idx];
	char *body = NULL, head[256];
	size_t blen = 0;
	int hlen;

	if (code == 200) {
		body = render_all(hs, &blen);
		if (body == NULL)
			code = 500;
	}
	if (code != 200) {
		const char *msg = code == 404	? "not found: try /metrics\n"
				  : code == 405 ? "only GET is served\n"
				  : code == 400 ? "bad request\n"
						: "out of memory\n";

		body = strdup(msg);
		blen = body ? strlen(msg) : 0;
	}
	hlen = snprintf(head, sizeof(head),
			"HTTP/1.1 %d %s\r\nContent-Type: text/plain; version=0.0.4; "
			"charset=utf-8\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
			code, reasons[code], blen);
	c->resp = malloc((size_t)hlen + blen);
	if (c->resp == NULL || body == NULL) {
		free(body);
		free(c->resp);
		c->resp = NULL;
		conn_close(hs, idx);
		return;
	}
	memcpy(c->resp, head, (size_t)hlen);
	memcpy(c->resp + hlen, body, blen);
	free(body);
	c->resp_len = (size_t)hlen + blen;
	c->sent = 0;
	hs->served++;
	conn_send(hs, idx);
}

void httpstats_handle(struct httpstats *hs, const struct loop_cqe *cqe)
{
	uint32_t idx = tag_slot(cqe->tag);
	unsigned int stage = tag_side(cqe->tag);
	struct httpstats_conn *c;
	int res = cqe->res, code;

	switch (stage) {
	case HS_ACCEPT:
		if (!(cqe->flags & LOOP_CQE_MORE)) {
			hs->armed[idx] = false;
			if (!hs->stopping && hs->fds[idx] >= 0)
				accept_arm(hs, (int)idx);
		}
		if (res < 0)
			return;
		for (uint32_t i = 0; i < HTTPSTATS_MAX_CONNS; i++) {
			c = &hs->conns[i];
			if (c->busy)
				continue;
			c->busy = true;
			c->fd = res;
			c->len = 0;
			c->resp = NULL;
			conn_recv(hs, i);
			return;
		}
		hs->refused++;
		close(res); /* too many scrapes at once: refuse, never queue */
		return;
	case HS_RECV:
		c = &hs->conns[idx];
		if (res <= 0) {
			conn_close(hs, idx);
			return;
		}
		c->len += (uint32_t)res;
		code = httpstats_route(c->req, c->len);
		if (code == 0 && c->len < HTTPSTATS_REQ_MAX)
			conn_recv(hs, idx);
		else
			respond(hs, idx, code == 0 ? 400 : code);
		return;
	case HS_SEND:
		c = &hs->conns[idx];
		if (res <= 0) {
			conn_close(hs, idx);
			return;
		}
		c->sent += (size_t)res;
		if (c->sent < c->resp_len)
			conn_send(hs, idx);
		else
			conn_close(hs, idx);
		return;
	case HS_CLOSE:
		c = &hs->conns[idx];
		free(c->resp);
		c->resp = NULL;
		c->busy = false;
		return;
	default: /* HS_TIMEOUT: the linked recv/send then fails with -ECANCELED */
		return;
	}
}

void httpstats_destroy(struct httpstats *hs)
{
	for (int i = 0; i < hs->nfds; i++)
		if (hs->fds[i] >= 0)
			close(hs->fds[i]);
	for (int i = 0; i < HTTPSTATS_MAX_CONNS; i++) {
		if (hs->conns[i].busy && hs->conns[i].fd >= 0)
			close(hs->conns[i].fd);
		free(hs->conns[i].resp);
		hs->conns[i].resp = NULL;
	}
	hs->nfds = 0;
	free(hs->snaps);
	hs->snaps = NULL;
	hs->nsnaps = 0;
}
