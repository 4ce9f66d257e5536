# Runs CMD with ARGS (a ;-list), prints its exit code and both streams, and fails when the command
# succeeded: a CLI error must be a non-zero exit.
execute_process(COMMAND ${CMD} ${ARGS} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("exit=${rc}\nstdout:\n${out}\nstderr:\n${err}")
if(rc EQUAL 0)
  message(FATAL_ERROR "expected a non-zero exit")
endif()
