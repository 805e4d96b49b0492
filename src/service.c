/* service: the little logic shared by the worker and the sessions about a pool: telling when
 * its traffic moves to its backup upstreams and back. */
#include "uproxy/service.h"

#include <stdio.h>
#include <string.h>

void upool_watch_backup(struct upool *u, uint32_t id, int worker_id)
{
	int moved = backend_pool_backup_changed(u->bp);
	char list[512] = "", a[ADDR_STRLEN];
	size_t n = 0;

	if (moved > 0) {
		for (uint32_t i = 0; i < backend_slots(u->bp) && n < sizeof(list); i++) {
			struct backend_info bi;

			if (backend_info(u->bp, i, &bi) < 0 || !bi.backup || bi.removed)
				continue;
			n += (size_t)snprintf(list + n, sizeof(list) - n, "%s%s", n ? ", " : "",
					      addr_format(&bi.addr, a, sizeof(a)));
		}
		log_warn("worker %d: pool %s: every primary is down; traffic moves to backup(s) %s",
			 worker_id, u->cfg.name, list);
	} else if (moved < 0) {
		struct backend_info bi;

		if (id != UINT32_MAX && backend_info(u->bp, id, &bi) == 0)
			addr_format(&bi.addr, a, sizeof(a));
		else
			snprintf(a, sizeof(a), "(re-resolved)");
		log_warn("worker %d: pool %s: primary %s is up again; traffic moves back from the "
			 "backups",
			 worker_id, u->cfg.name, a);
	}
}
