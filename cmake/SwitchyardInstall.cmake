# Install rules: headers, the exported targets, and a relocatable package config so that
# find_package(switchyard CONFIG REQUIRED) works against the install prefix.
include(CMakePackageConfigHelpers)

set(SWITCHYARD_INSTALL_CMAKEDIR "${CMAKE_INSTALL_DATADIR}/switchyard/cmake" CACHE STRING
    "Where the package config files are installed")

install(DIRECTORY include/switchyard DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS ${switchyard_export_targets} EXPORT switchyardTargets)
install(EXPORT switchyardTargets NAMESPACE switchyard:: DESTINATION ${SWITCHYARD_INSTALL_CMAKEDIR})
export(EXPORT switchyardTargets NAMESPACE switchyard::
       FILE "${PROJECT_BINARY_DIR}/switchyardTargets.cmake")

set(SWITCHYARD_CCCL_DIR "${CCCL_DIR}")
configure_package_config_file(cmake/switchyardConfig.cmake.in
  "${PROJECT_BINARY_DIR}/switchyardConfig.cmake"
  INSTALL_DESTINATION ${SWITCHYARD_INSTALL_CMAKEDIR})
write_basic_package_version_file("${PROJECT_BINARY_DIR}/switchyardConfigVersion.cmake"
  COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES "${PROJECT_BINARY_DIR}/switchyardConfig.cmake"
              "${PROJECT_BINARY_DIR}/switchyardConfigVersion.cmake"
        DESTINATION ${SWITCHYARD_INSTALL_CMAKEDIR})
