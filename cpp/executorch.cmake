# edgevit_infer_et against the executorch Python wheel (headers, shared libraries, CMake package):
#   cmake -S cpp -B build -DEDGEVIT_EXECUTORCH=ON \
#     -Dexecutorch_DIR="$(python -c 'import executorch, os; print(os.path.join(list(executorch.__path__)[0], "share", "cmake"))')"
# The package's imported targets (executorch::runtime, ...) need CMake >= 3.28; with an older CMake it
# still sets EXECUTORCH_INCLUDE_DIRS / EXECUTORCH_COMPILE_DEFINITIONS / EXECUTORCH_LIBRARIES (the runtime,
# the CPU kernels and the XNNPACK delegate, wrapped so the linker keeps the registration-only libraries),
# which is what is used here, so both CMake versions build the same way.
find_package(executorch CONFIG REQUIRED)
if(NOT EXECUTORCH_FOUND OR NOT EXECUTORCH_LIBRARIES)
  message(FATAL_ERROR "the executorch package at ${executorch_DIR} has no runtime libraries to link")
endif()
message(STATUS "ExecuTorch ${EXECUTORCH_BUILD_VERSION} from ${executorch_DIR}")

add_executable(edgevit_infer_et src/executorch_main.cpp)
target_include_directories(edgevit_infer_et SYSTEM PRIVATE ${EXECUTORCH_INCLUDE_DIRS})
target_compile_definitions(edgevit_infer_et PRIVATE ${EXECUTORCH_COMPILE_DEFINITIONS})
target_link_libraries(edgevit_infer_et PRIVATE edgevit_app_common ${EXECUTORCH_LIBRARIES})
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  target_compile_options(edgevit_infer_et PRIVATE -Wall -Wextra)
endif()
# The wheel's libraries are not on the loader path: record their folder in the binary.
set_target_properties(edgevit_infer_et PROPERTIES BUILD_RPATH "${EXECUTORCH_RUNTIME_LIBRARY_DIR}"
                                                  INSTALL_RPATH "${EXECUTORCH_RUNTIME_LIBRARY_DIR}")
install(TARGETS edgevit_infer_et RUNTIME DESTINATION bin)
