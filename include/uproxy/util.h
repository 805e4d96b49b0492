/* util: the small helpers every module would otherwise write again: the monotonic clock, and
 * closing a socket with a reset. Header-only; no state, no allocation. */
#ifndef UPROXY_UTIL_H
#define UPROXY_UTIL_H

#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

static inline uint64_t monotonic_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static inline uint64_t monotonic_ms(void)
{
	return monotonic_us() / 1000;
}

/* Makes the next close() of fd send an RST instead of a FIN (SO_LINGER {1, 0}): for a peer
 * that must learn that its stream was cut, never that it ended. */
static inline void sock_linger_rst(int fd)
{
	static const struct linger lg = { .l_onoff = 1, .l_linger = 0 };

	(void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

#endif
