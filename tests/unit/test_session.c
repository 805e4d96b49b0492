/* Unit tests for the session state machine's transition table: every allowed transition,
 * and that every other (state, event) pair is refused. */
#include <criterion/criterion.h>

#include "uproxy/loop.h"
#include "uproxy/session.h"

static const struct {
	enum session_state from;
	enum session_event ev;
	enum session_state to;
} allowed[] = {
	{ SS_FREE, SE_START, SS_CONNECTING },
	{ SS_FREE, SE_START_PROXY, SS_AWAIT_HEADER },
	{ SS_AWAIT_HEADER, SE_HEADER_DONE, SS_CONNECTING },
	{ SS_AWAIT_HEADER, SE_ABORT, SS_CLOSING },
	{ SS_CONNECTING, SE_CONNECTED, SS_STREAMING },
	{ SS_CONNECTING, SE_ABORT, SS_CLOSING },
	{ SS_STREAMING, SE_C2U_DONE, SS_CLIENT_DONE },
	{ SS_STREAMING, SE_U2C_DONE, SS_UPSTREAM_DONE },
	{ SS_STREAMING, SE_ABORT, SS_CLOSING },
	{ SS_CLIENT_DONE, SE_U2C_DONE, SS_CLOSING },
	{ SS_CLIENT_DONE, SE_ABORT, SS_CLOSING },
	{ SS_UPSTREAM_DONE, SE_C2U_DONE, SS_CLOSING },
	{ SS_UPSTREAM_DONE, SE_ABORT, SS_CLOSING },
	{ SS_CLOSING, SE_RELEASED, SS_FREE },
};

Test(session, allowed_transitions)
{
	for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
		cr_assert_eq(session_transition(allowed[i].from, allowed[i].ev), allowed[i].to,
			     "%s --%s--> expected %s", session_state_name(allowed[i].from),
			     session_event_name(allowed[i].ev), session_state_name(allowed[i].to));
}

Test(session, everything_else_refused)
{
	for (int s = 0; s < SS__COUNT; s++) {
		for (int e = 0; e < SE__COUNT; e++) {
			bool listed = false;

			for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
				listed |= allowed[i].from == (enum session_state)s &&
					  allowed[i].ev == (enum session_event)e;
			if (!listed)
				cr_assert_eq(session_transition(s, e), SS__COUNT,
					     "%s --%s--> should be refused", session_state_name(s),
					     session_event_name(e));
		}
	}
}

Test(session, out_of_range_refused)
{
	cr_assert_eq(session_transition(SS__COUNT, SE_START), SS__COUNT);
	cr_assert_eq(session_transition(SS_FREE, SE__COUNT), SS__COUNT);
}

Test(session, half_close_both_orders_end_closing)
{
	enum session_state s = SS_FREE;

	s = session_transition(s, SE_START);
	s = session_transition(s, SE_CONNECTED);
	s = session_transition(s, SE_C2U_DONE);
	cr_assert_eq(s, SS_CLIENT_DONE);
	cr_assert_eq(session_transition(s, SE_U2C_DONE), SS_CLOSING);
	s = session_transition(SS_STREAMING, SE_U2C_DONE);
	cr_assert_eq(s, SS_UPSTREAM_DONE);
	cr_assert_eq(session_transition(s, SE_C2U_DONE), SS_CLOSING);
}

Test(session, names)
{
	cr_assert_str_eq(session_state_name(SS_CLOSING), "closing");
	cr_assert_str_eq(session_event_name(SE_ABORT), "abort");
	cr_assert_str_eq(session_state_name(SS__COUNT), "?");
}

Test(tag, round_trips_every_field)
{
	uint64_t t = tag_make(TAG_SLOT_MAX, TAG_GEN_MASK, 15, OP_CLOSE);

	cr_assert_eq(tag_slot(t), TAG_SLOT_MAX);
	cr_assert_eq(tag_gen(t), TAG_GEN_MASK);
	cr_assert_eq(tag_side(t), 15);
	cr_assert_eq(tag_op(t), OP_CLOSE);
	t = tag_make(12345, 678, 1, OP_RECV);
	cr_assert_eq(tag_slot(t), 12345);
	cr_assert_eq(tag_gen(t), 678);
	cr_assert_eq(tag_side(t), 1);
	cr_assert_eq(tag_op(t), OP_RECV);
	/* the generation wraps inside its field, never spilling into the slot */
	cr_assert_eq(tag_slot(tag_make(7, TAG_GEN_MASK + 1, 0, OP_SEND)), 7);
	cr_assert_eq(tag_gen(tag_make(7, TAG_GEN_MASK + 1, 0, OP_SEND)), 0);
}
