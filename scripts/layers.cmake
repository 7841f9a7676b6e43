# The layers of the build: one library per folder, each linking only the
# layers below it, and a check at build time that a folder's sources include
# headers only from its own folder and from the layers it links. A header
# reached through a wrong include then fails the build, not a code review.
#
#   fsd_layer(NAME DIRS dir... [SOURCES file...] [USES layer...] [LIBS lib...])
#     A library made of SOURCES (none: header-only) whose code lives in DIRS
#     (folders relative to the top, each checked non-recursively), linking
#     the layers USES and the external libraries LIBS.
#   fsd_layer_check(TARGET DIRS dir... [USES layer...])
#     Only the check, for an executable or a library made otherwise.

set(FSD_LAYER_CHECKER ${CMAKE_CURRENT_LIST_DIR}/check-includes.cmake)

function(fsd_layer_check target)
  cmake_parse_arguments(L "" "" "DIRS;USES" ${ARGN})
  set(allowed ${L_DIRS})
  foreach(dep IN LISTS L_USES)
    get_target_property(below ${dep} FSD_LAYER_DIRS)
    if(NOT below)
      message(FATAL_ERROR "${target}: ${dep} is not a layer (declare it with fsd_layer first)")
    endif()
    list(APPEND allowed ${below})
  endforeach()
  list(REMOVE_DUPLICATES allowed)
  set_property(TARGET ${target} PROPERTY FSD_LAYER_DIRS "${allowed}")

  set(files)
  foreach(dir IN LISTS L_DIRS)
    file(GLOB found CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/${dir}/*.h ${PROJECT_SOURCE_DIR}/${dir}/*.cpp)
    list(APPEND files ${found})
  endforeach()
  set(config ${CMAKE_CURRENT_BINARY_DIR}/${target}.layer.cmake)
  file(CONFIGURE OUTPUT ${config} CONTENT
       "set(LAYER [[${target}]])\nset(ALLOWED [[${allowed}]])\nset(FILES [[${files}]])\nset(TOP [[${PROJECT_SOURCE_DIR}]])\n")
  set(stamp ${CMAKE_CURRENT_BINARY_DIR}/${target}.layer-checked)
  add_custom_command(OUTPUT ${stamp}
                     COMMAND ${CMAKE_COMMAND} -DCONFIG=${config} -P ${FSD_LAYER_CHECKER}
                     COMMAND ${CMAKE_COMMAND} -E touch ${stamp}
                     DEPENDS ${files} ${config} ${FSD_LAYER_CHECKER}
                     COMMENT "Checking the includes of ${target} against its layers"
                     VERBATIM)
  add_custom_target(${target}_layer DEPENDS ${stamp})
  add_dependencies(${target} ${target}_layer)
endfunction()

function(fsd_layer name)
  cmake_parse_arguments(L "" "" "DIRS;SOURCES;USES;LIBS" ${ARGN})
  if(L_SOURCES)
    add_library(${name} STATIC ${L_SOURCES})
    set(scope PUBLIC)
  else()
    add_library(${name} INTERFACE)
    set(scope INTERFACE)
  endif()
  target_include_directories(${name} ${scope} ${PROJECT_SOURCE_DIR})
  target_compile_features(${name} ${scope} cxx_std_20)
  target_link_libraries(${name} ${scope} ${L_USES} ${L_LIBS})
  set_property(GLOBAL APPEND PROPERTY FSD_LAYERS ${name})
  fsd_layer_check(${name} DIRS ${L_DIRS} USES ${L_USES})
endfunction()
