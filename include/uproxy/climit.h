/* TEMPORARY: replaced by the guard branch. */
#ifndef UPROXY_CLIMIT_H
#define UPROXY_CLIMIT_H
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#define CLIMIT_NO_SLOT UINT32_MAX
enum climit_verdict { CLIMIT_OK, CLIMIT_OVER_CONNS, CLIMIT_OVER_RATE, CLIMIT_TABLE_FULL };
struct climit;
struct climit *climit_new(uint32_t entries, uint32_t max_conns, uint32_t rate, uint32_t burst,
			  bool fail_open);
void climit_free(struct climit *c);
void climit_set_limits(struct climit *c, uint32_t max_conns, uint32_t rate, uint32_t burst,
		       bool fail_open);
uint32_t climit_held(const struct climit *c);
enum climit_verdict climit_admit(struct climit *c, const struct sockaddr *sa, uint64_t now_ms,
				 uint32_t *slot);
void climit_release(struct climit *c, uint32_t slot);
#endif
