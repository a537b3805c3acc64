// exit_status.h: the process exit statuses shared by every command (and the run code that
// returns them).
#pragma once

// QK_EXIT_INTERRUPTED (EX_TEMPFAIL): stopped by a signal after a checkpoint; requeue and --resume.
enum { QK_EXIT_OK = 0, QK_EXIT_FAIL = 1, QK_EXIT_USAGE = 2, QK_EXIT_INTERRUPTED = 75 };
